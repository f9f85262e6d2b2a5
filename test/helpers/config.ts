/** Config-test helpers: the problems check-config would report for a YAML text. */
import assert from 'node:assert/strict';
import { ConfigError, parseConfig } from '../../src/config/load.js';

/** The problems of a config that must fail to load (as `test.yaml`). */
export function configProblems(yaml: string): string[] {
  try {
    parseConfig(yaml, 'test.yaml');
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`);
    return err.problems;
  }
  assert.fail(`config was accepted:\n${yaml}`);
}
