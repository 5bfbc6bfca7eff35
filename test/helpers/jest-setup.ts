import { DefaultLogger, Runtime } from '@temporalio/worker';

// Tests fail, cancel and reject on purpose; they assert outcomes, so keep the SDK's own logging
// (TypeScript and native) to real errors.
Runtime.install({
  logger: new DefaultLogger('ERROR'),
  telemetryOptions: { logging: { filter: { core: 'ERROR', other: 'ERROR' } } },
  shutdownSignals: [],
});
