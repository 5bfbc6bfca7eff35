import { installCliRuntime } from '../../src/worker';

// Keep test output to what matters: SDK logs at WARN, one line each.
installCliRuntime();
