/**
 * `user` / `group` resolved to ids (src/service/privileges.ts): names and numeric ids, the
 * primary group by default, and the problems check-config reports. The drop itself runs as
 * root in test/cli/privileges.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, parseConfig } from '../../src/config/load.js';
import { privilegeProblems, resolveTarget } from '../../src/service/privileges.js';

describe('user and group', () => {
  it('root by name and by id, with its primary group', () => {
    assert.deepEqual(resolveTarget({ user: 'root' }), { target: { user: 'root', group: 'root', uid: 0, gid: 0, name: 'root' }, problems: [] });
    assert.deepEqual(resolveTarget({ user: 0 }).target, { user: '0', group: 'root', uid: 0, gid: 0, name: 'root' });
    assert.deepEqual(resolveTarget({ user: '0', group: '0' }).target, { user: '0', group: '0', uid: 0, gid: 0, name: 'root' });
  });

  it('a uid without an entry needs a group; a group alone is a problem', () => {
    const uid = 3999999901;
    assert.deepEqual(privilegeProblems({ user: uid }), [`group: user ${uid} has no entry in the user database, hence no primary group: set group`]);
    assert.deepEqual(resolveTarget({ user: uid, group: 0 }).target, { user: String(uid), group: '0', uid, gid: 0, name: undefined });
    assert.deepEqual(privilegeProblems({ group: 'root' }), ['group: needs user (the group alone is never changed)']);
    assert.deepEqual(privilegeProblems({}), []);
  });

  it('names that do not exist', () => {
    assert.deepEqual(privilegeProblems({ user: 'nosuchuser-postern' }), ['user: no such user "nosuchuser-postern"']);
    assert.deepEqual(privilegeProblems({ user: 'root', group: 'nosuchgroup-postern' }), ['group: no such group "nosuchgroup-postern"']);
  });

  it('the schema takes names and ids, not what no user database has', () => {
    const c = parseConfig('user: postern\ngroup: 65534\n');
    assert.deepEqual([c.user, c.group], ['postern', 65534]);
    assert.throws(() => parseConfig('user: "post ern"\n'), (e: unknown) => e instanceof ConfigError && /user/.test(e.message));
    assert.throws(() => parseConfig('group: -1\n'), (e: unknown) => e instanceof ConfigError && /group/.test(e.message));
    assert.throws(() => parseConfig('servers:\n  - listen: ["127.0.0.1:0"]\n    user: postern\n'), (e: unknown) => e instanceof ConfigError && /servers\.0: unknown key "user"/.test(e.message));
  });
});
