import { decodePackIndex, encodePackIndex } from '../../src/fleet/chunk-pack';

describe('pack index', () => {
  it('round-trips hashes, offsets past 4 GiB and lengths, as little-endian u64 offsets', () => {
    const entries = [
      { hash: 'ab'.repeat(32), offset: 0, length: 65536 },
      { hash: '01'.repeat(32), offset: 2 ** 32 + 65536, length: 4096 },
      { hash: 'fe'.repeat(32), offset: 2 ** 45 + 3, length: 1 },
    ];
    const encoded = encodePackIndex(entries);
    expect(decodePackIndex(encoded, 'acct-1/packs/ab/x.idx')).toEqual(entries);
    // The second entry's offset field: 16-byte header, 44-byte entries, after its 32-byte hash.
    expect(encoded.readBigUInt64LE(16 + 44 + 32)).toBe(BigInt(2 ** 32 + 65536));
  });
});
