#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.

"""End-to-end demo: cold migrate and resize that keep a guest's vPMEM data.

Builds a two-host environment (network namespaces with real sshd, vPMEM
namespace stand-ins per host), runs patched Nova's real services in this
process with the compute API on real HTTP, and drives it with the real
``openstack`` CLI through the scenario:

  1. flavor with hw:pmem, boot on host A, write a known pattern
  2. migrate --copy-pmem-devices, VERIFY_RESIZE, data on B, confirm,
     A zeroed
  3. resize --flavor bigger --copy-pmem-devices, revert: source intact,
     destination zeroed
  4. a destination that breaks mid-copy (its backing storage is full):
     server ACTIVE on the source with its data, destination zeroed,
     migration in error with a fault message
  5. migrate WITHOUT the flag: the destination namespace is empty

Steps that need the copy feature (API 2.105, the CLI flag, the copy helper)
are reported as "not available in this tree" when it is absent. It ends with
a summary table and exits 0 only if every check held.

Run as root:  python -m e2e.demo [--namespace-mib N] [--keep]
(put the Nova tree under test first on PYTHONPATH, or use tools/demo).
"""

import argparse
import logging
import os
import pathlib
import sys
import warnings

warnings.filterwarnings('ignore')
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', 'False')

import nova.tests.functional  # noqa: E402,F401 (eventlet monkey patching)

from e2e import cloud as cloud_mod  # noqa: E402
from e2e import environment  # noqa: E402
from e2e import namespaces as ns_mod  # noqa: E402
from e2e import scenario as scenario_mod  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def say(text=''):
    print(text, flush=True)


def heading(text):
    say()
    say('=== ' + text)


def report_checks(row):
    for what, ok, detail in row.checks:
        say('  [%s] %s%s' % ('ok' if ok else 'FAILED', what,
                             (': ' + detail) if detail else ''))


def step_boot(sc):
    heading('1. flavor with hw:pmem, boot on host A, write a known pattern')
    row = scenario_mod.Result('boot on hostA + write pattern')
    sc.create_flavors()
    server_id = sc.boot(sc.env.a)
    sc.show(server_id)
    host, written = sc.write_pattern(server_id)
    row.check('server is on hostA', host is sc.env.a, host.name)
    row.check('server has one SMALL namespace on hostA', len(written) == 1)
    row.bytes = sum(ns.size for ns, _ in written)
    row.digests = 'src %s' % written[0][1][:12]
    return server_id, host, written, row.finish()


def _check_copied(sc, row, src_host, src, digest, dst_host, dst):
    got = ns_mod.digest(dst.backing, src.size)
    row.check('%s:%s equals the original' % (dst_host.name, dst.devpath),
              got == digest, got[:16])
    row.digests = '%s -> %s' % (digest[:12], got[:12])


def step_migrate_copy(sc, server_id, feature):
    heading('2. openstack server migrate --copy-pmem-devices, confirm, then '
            'stop and start')
    row = scenario_mod.Result('migrate --copy, confirm, stop, start')
    if not feature.available:
        say('  %s' % feature)
        return row.skip(str(feature))
    src_host, written = sc.cloud.namespaces_of(server_id)
    src_digest = ns_mod.digest(written[0].backing, written[0].size)
    migration, seconds = sc.migrate(server_id, copy=True)
    row.check('migration finished (VERIFY_RESIZE)',
              migration['status'] == 'finished', migration['status'])
    server = sc.show(server_id)
    row.check('server is VERIFY_RESIZE', server['status'] == 'VERIFY_RESIZE')
    source, old, dest, new = sc.cloud.migration_namespaces(server_id,
                                                           migration)
    say('  bytes on the destination:')
    sc.describe(dest, new[0])
    _check_copied(sc, row, source, old[0], src_digest, dest, new[0])
    row.check('device paths differ between the hosts',
              old[0].devpath != new[0].devpath,
              '%s vs %s' % (old[0].devpath, new[0].devpath))
    row.bytes, row.seconds = old[0].size, seconds
    sc.confirm(server_id)
    sc.show(server_id)
    say('  the source namespace after confirm:')
    row.check('%s:%s zeroed after confirm' % (source.name, old[0].devpath),
              sc.describe(source, old[0]) == 'zero')
    say('  openstack server stop, then start: the data stays with the server')
    sc.stop(server_id)
    sc.start(server_id)
    sc.describe(dest, new[0])
    _check_copied(sc, row, source, old[0], src_digest, dest, new[0])
    return row.finish()


def step_resize_revert(sc, server_id, feature):
    heading('3. openstack server resize --flavor pmem.bigger '
            '--copy-pmem-devices, then revert')
    row = scenario_mod.Result('resize --copy-pmem-devices + revert')
    if not feature.available:
        say('  %s' % feature)
        return row.skip(str(feature))
    src_host, namespaces = sc.cloud.namespaces_of(server_id)
    say('  the guest labelled its NVDIMM: the last %d MiB of %s:%s hold '
        'labels' % (ns_mod.LABEL_SIZE >> 20, src_host.name,
                    namespaces[0].devpath))
    src_digest = ns_mod.write_labels(namespaces[0].backing,
                                     namespaces[0].size)
    with open(namespaces[0].backing, 'rb') as f:
        src_bytes = f.read(namespaces[0].size)
    migration, seconds = sc.resize(server_id, 'pmem.bigger', copy=True)
    row.check('resize finished (VERIFY_RESIZE)',
              migration['status'] == 'finished', migration['status'])
    source, old, dest, new = sc.cloud.migration_namespaces(server_id,
                                                           migration)
    sc.show(server_id)
    say('  bytes on the destination (LARGE namespace):')
    sc.describe(dest, new[0])
    say('  what the guest sees in its larger NVDIMM:')
    for check, ok in ns_mod.guest_layout(src_bytes, new[0].backing,
                                         new[0].size).items():
        row.check(check, ok)
    row.digests = '%s -> layout' % src_digest[:12]
    row.bytes, row.seconds = old[0].size, seconds
    sc.revert(server_id)
    sc.show(server_id)
    say('  after revert:')
    after = ns_mod.digest(old[0].backing, old[0].size)
    sc.describe(source, old[0])
    row.check('source data intact after revert', after == src_digest)
    row.check('destination %s:%s zeroed after revert' % (
        dest.name, new[0].devpath), sc.describe(dest, new[0]) == 'zero')
    row.check('server is back on %s' % source.name,
              sc.cloud.host_of(server_id) == source.name)
    return row.finish()


def step_failure(sc, server_id, feature):
    heading('4. failure: the destination breaks mid-copy (its backing '
            'storage is full)')
    row = scenario_mod.Result('migrate --copy, dest storage full')
    if not feature.available:
        say('  %s' % feature)
        return row.skip(str(feature))
    src_host, namespaces = sc.cloud.namespaces_of(server_id)
    src = namespaces[0]
    src_digest = ns_mod.digest(src.backing, src.size)
    dest_host = sc.env.b if src_host is sc.env.a else sc.env.a
    say('  filling the backing storage of %s' % dest_host.name)
    dest_host.namespaces.fill_storage()
    try:
        migration, seconds = sc.migrate(server_id, copy=True)
    finally:
        dest_host.namespaces.free_storage()
    row.check('migration is in error', migration['status'] in (
        'error', 'failed'), migration['status'])
    server = sc.show(server_id)
    row.check('server ACTIVE', server['status'] == 'ACTIVE',
              server['status'])
    row.check('server still on %s' % src_host.name,
              server['OS-EXT-SRV-ATTR:host'] == src_host.name)
    after = ns_mod.digest(src.backing, src.size)
    row.check('source data intact', after == src_digest, after[:16])
    row.check('every namespace of %s is zero' % dest_host.name,
              all(ns_mod.is_zero(ns.backing, ns.size)
                  for ns in dest_host.namespaces.namespaces))
    fault = sc.fault_message(server_id)
    say('  fault: %s' % fault)
    row.check('a fault message says what failed', bool(fault), fault[:80])
    row.digests = '%s -> %s' % (src_digest[:12], after[:12])
    return row.finish()


def step_migrate_no_copy(sc, server_id):
    heading('5. for contrast: openstack server migrate WITHOUT '
            '--copy-pmem-devices')
    row = scenario_mod.Result('migrate (no copy) + confirm')
    src_host, namespaces = sc.cloud.namespaces_of(server_id)
    src = namespaces[0]
    src_digest = ns_mod.digest(src.backing, src.size)
    migration, seconds = sc.migrate(server_id, copy=False)
    row.check('migration finished (VERIFY_RESIZE)',
              migration['status'] == 'finished', migration['status'])
    server = sc.show(server_id)
    row.check('server is VERIFY_RESIZE', server['status'] == 'VERIFY_RESIZE')
    source, old, dest, new = sc.cloud.migration_namespaces(server_id,
                                                           migration)
    say('  the destination namespace:')
    row.check('%s:%s is empty: the data was NOT carried over' % (
        dest.name, new[0].devpath), sc.describe(dest, new[0]) == 'zero')
    row.check('the source still holds the data until confirm',
              ns_mod.digest(src.backing, src.size) == src_digest)
    sc.confirm(server_id)
    sc.show(server_id)
    say('  the source namespace after confirm:')
    row.check('%s:%s zeroed after confirm' % (source.name, src.devpath),
              sc.describe(source, src) == 'zero')
    row.bytes, row.seconds = 0, seconds
    row.digests = '%s -> %s' % (src_digest[:12], 'zero')
    return row.finish()


def summary(rows):
    heading('summary')
    header = ('operation', 'bytes', 'MB/s', 'digests', 'result')
    table = [header] + [(r.operation, str(r.bytes or ''), r.rate,
                         r.digests if len(r.digests) < 60 else
                         r.digests[:57] + '...', r.result) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(5)]
    for index, line in enumerate(table):
        say('  '.join(cell.ljust(width) for cell, width in
                      zip(line, widths)).rstrip())
        if index == 0:
            say('  '.join('-' * width for width in widths))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument('--namespace-mib', type=int, default=64,
                        help='size of a SMALL namespace in MiB (LARGE is '
                             'twice that); default 64')
    parser.add_argument('--streams', type=int, default=2,
                        help='[libvirt] copy streams; default 2')
    parser.add_argument('--log', default=str(
        ROOT / '.workspace' / 'logs' / 'e2e-demo-nova.log'),
        help='where Nova\'s log goes (default %(default)s)')
    parser.add_argument('--loopback', action='store_true',
                        help='use two sshd on loopback ports instead of '
                             'network namespaces')
    args = parser.parse_args(argv)
    environment.ensure_root()

    log_path = pathlib.Path(args.log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, mode='w')
    handler.setFormatter(logging.Formatter(
        '%(asctime)s %(levelname)s [%(name)s] %(message)s'))

    env = environment.Environment(namespace_mib=args.namespace_mib,
                                  streams=args.streams,
                                  use_netns=False if args.loopback else None)
    rows = []
    say('vPMEM copy end-to-end demo (Nova %s)' % nova_version())
    say('Nova log: %s' % log_path)
    env.setup()
    cloud = cloud_mod.NovaCloud()
    cloud.env = env
    try:
        describe_environment(env)
        cloud.start()
        logging.getLogger().addHandler(handler)
        say('Nova services up; compute API on %s (max microversion %s)' % (
            cloud.http_url, cloud.max_api_version()))
        sc = scenario_mod.Scenario(env, cloud, say=say)
        feature = sc.feature()
        say('copy feature: %s' % feature)

        server_id, host, written, row = step_boot(sc)
        rows.append(row)
        report_checks(row)
        for step in (step_migrate_copy, step_resize_revert, step_failure):
            row = step(sc, server_id, feature)
            report_checks(row)
            rows.append(row)
        row = step_migrate_no_copy(sc, server_id)
        report_checks(row)
        rows.append(row)
    except Exception as exc:
        failed = scenario_mod.Result('scenario aborted')
        failed.digests = repr(exc)[:200]
        rows.append(failed)
        say('ERROR: %r' % exc)
        import traceback
        traceback.print_exc()
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)   # quiet shutdown
        try:
            cloud.stop()
        except Exception as exc:       # the summary still matters
            say('cleanup of the Nova services failed: %r' % exc)
        env.teardown()
        say('environment torn down (netns, sshd, ssh_config drop-in, '
            'mounts, files)')
    summary(rows)
    ok = all(r.ok for r in rows)
    skipped = [r for r in rows if r.result == 'SKIP']
    say()
    if skipped:
        say('%d step(s) skipped: the copy feature is %s' % (
            len(skipped), feature))
    say('RESULT: %s' % ('every check held' if ok else 'SOME CHECKS FAILED'))
    return 0 if ok else 1


def describe_environment(env):
    say('hosts (%s):' % ('network namespaces' if env.mode == 'netns' else
                         'FALLBACK: sshd on loopback ports, no network '
                         'namespaces available'))
    for host in env.hosts:
        say('  %s  %s  ssh root@%s:%d  namespaces: %s' % (
            host.name, host.netns or '-', host.address, host.port,
            ', '.join('%s=%s (%s, %d MiB)' % (ns.name, ns.devpath, ns.label,
                                              ns.size >> 20)
                      for ns in host.namespaces.namespaces)))
    say('  namespace files are stand-ins for device DAX (bind-mounted '
        'regular files on a per-host tmpfs); daxio is the e2e/bin stand-in')
    for host in env.hosts:
        result = env.pair.check_ssh(host)
        say('  ssh -o BatchMode=yes %s true -> exit %d (key auth, pinned '
            'host key)' % (host.address, result.returncode))


def nova_version():
    import nova
    return os.path.dirname(os.path.dirname(nova.__file__))


if __name__ == '__main__':
    sys.exit(main())
