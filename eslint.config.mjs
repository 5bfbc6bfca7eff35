import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    ignores: [
      'node_modules/**',
      '.tools/**',
      '.rehome/**',
      'dist/**',
      'bin/**',
      'scripts/*.js',
      '*.config.js',
      '*.mjs',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    languageOptions: { parserOptions: { project: './tsconfig.json' } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
    },
  },
  {
    // Small plain-Node helpers (the dev server's leash) run without TypeScript.
    files: ['**/*.cjs'],
    languageOptions: {
      sourceType: 'commonjs',
      globals: { require: 'readonly', process: 'readonly', setTimeout: 'readonly' },
    },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
  {
    // Workflow code runs in Temporal's deterministic sandbox: Node modules and our own
    // non-deterministic code must stay out; only contracts and @temporalio/workflow come in.
    files: ['src/workflows/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['node:*'], message: 'Workflow code must be deterministic: no Node modules.' },
            {
              group: [
                'fs',
                'path',
                'os',
                'crypto',
                'child_process',
                'net',
                'http',
                'https',
                'worker_threads',
                'timers',
              ],
              message: 'Workflow code must be deterministic: no Node modules.',
            },
            {
              group: [
                '../fleet/*',
                '../activities/*',
                '../planning/*',
                '../temporal/*',
                '@temporalio/client',
                '@temporalio/worker',
                '@temporalio/activity',
                'better-sqlite3',
              ],
              message:
                'Workflows import only src/contracts and @temporalio/workflow (activity types via `import type`).',
              allowTypeImports: true,
            },
          ],
        },
      ],
    },
  },
);
