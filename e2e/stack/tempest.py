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

"""Upstream Tempest against the patched API of the running cloud.

Tempest (the release pinned in ``tempest-requirements.txt``, of the same
series as Nova 34) runs from a virtualenv of its own, with a workspace under
``STATE/tempest`` whose ``etc/tempest.conf`` is generated here from the
cloud that ``tools/cloud up`` started: its endpoints, its admin user, its
images, its filters and the network extensions Neutron reports.
Validation is off: the guest has no network and no ssh, so a server counts
as working once Nova says it is ACTIVE (the tour checks the guest itself).

Tempest's servers boot a real disk image whose only code is its boot
sector, which halts the vCPU (``halting_disk``): what runs inside is not
what these tests check, and under TCG each boot of the tour's Linux guest
took about a core for the seconds its kernel started, with dozens of
servers booting two at a time.
"""

import re
import struct
import subprocess

from e2e.stack import base
from e2e.stack import control
from e2e.stack import nova
from e2e.stack import venv

REQUIREMENTS = base.ROOT / 'e2e' / 'stack' / 'tempest-requirements.txt'
VENV_BIN = base.TEMPEST_VENV_BIN
WORKSPACE = base.STATE / 'tempest'
IMAGES = ('tempest-halt', 'tempest-halt-alt')
# A 1 MiB raw disk whose boot sector (BIOS loads it at 0x7c00) is
# "cli; hlt; jmp back to the hlt": no interrupt wakes the vCPU again. Its
# partition table holds one Linux partition over the rest of the disk, as
# Glance's format checks want of a disk with a boot signature.
HALT_CODE = b'\xfa\xf4\xeb\xfd'
DISK_BYTES = 1 << 20
SECTOR = 512
# Plain flavors: Tempest's servers do not ask for vPMEM. Two sizes, so a
# resize has somewhere to go.
FLAVORS = (('tempest.small', 512), ('tempest.alt', 768))

# Test id prefixes (literal, not regular expressions): the cold-move tests
# and the negative tests of the move and server APIs, the resize tests, the
# server tests, and the compute API tests of microversions up to 2.105 (the
# classes with a min_microversion) whose feature this cloud has. The ones
# left out need what it has not: volumes, live migration, consoles, ports,
# a metadata service or a config drive.
TESTS = (
    'tempest.api.compute.admin.test_migrations.',
    'tempest.api.compute.admin.test_servers_negative.',
    'tempest.api.compute.servers.test_server_actions.ServerActionsTestJSON.'
    'test_resize_',
    'tempest.api.compute.servers.test_server_actions.ServerActionsTestOther'
    'B.test_resize_',
    'tempest.api.compute.servers.test_server_actions.ServersAaction247Test.',
    'tempest.api.compute.servers.test_servers.',
    'tempest.api.compute.servers.test_servers_negative.',
    'tempest.api.compute.servers.test_servers_microversions.',
    'tempest.api.compute.servers.test_server_tags.',
    'tempest.api.compute.servers.test_instance_actions.'
    'InstanceActionsV221TestJSON.',
    'tempest.api.compute.servers.test_create_server.'
    'ServersV294TestFqdnHostnames.',
    'tempest.api.compute.servers.test_server_group.ServerGroup264TestJSON.',
    'tempest.api.compute.admin.test_servers.ServersAdmin275Test.',
    'tempest.api.compute.admin.test_server_diagnostics.'
    'ServerDiagnosticsV248Test.',
    'tempest.api.compute.admin.test_hypervisor.HypervisorAdminV2',
    'tempest.api.compute.admin.test_services_negative.'
    'ServicesAdminNegativeV253TestJSON.',
    'tempest.api.compute.admin.test_flavors_microversions.',
    'tempest.api.compute.admin.test_flavors_extra_specs.'
    'FlavorMetadataValidation.',
    'tempest.api.compute.admin.test_keypairs_v210.',
    'tempest.api.compute.keypairs.test_keypairs_v22.',
    'tempest.api.compute.admin.test_quotas.QuotasAdminTestV2',
    'tempest.api.compute.admin.test_quotas.QuotaClassesAdmin257Test.',
    'tempest.api.compute.limits.test_absolute_limits.'
    'AbsoluteLimitsV257TestJSON.',
)

_TOTAL = re.compile(r'^ - (Passed|Failed|Skipped): (\d+)$', re.M)


def ensure_venv():
    venv.install(VENV_BIN, ['-r', str(REQUIREMENTS)], [REQUIREMENTS],
                 'tempest', 'pip-install-tempest.log')


def halting_disk(path, tag):
    """Write the halting disk; tag tells two such images apart."""
    sectors = DISK_BYTES // SECTOR
    partition = struct.pack('<B3BB3BII', 0, 0, 2, 0, 0x83, 0, 0, 0, 1,
                            sectors - 1)
    sector = (HALT_CODE + tag.encode()).ljust(446, b'\0') + partition
    with open(path, 'wb') as f:
        f.write(sector.ljust(510, b'\0') + b'\x55\xaa')   # boot signature
        f.truncate(DISK_BYTES)


def _upload_images():
    ids = []
    for name in IMAGES:
        path = WORKSPACE / ('%s.raw' % name)
        halting_disk(path, name)
        ids.append(base.openstack(
            'image', 'create', '--public', '--disk-format', 'raw',
            '--container-format', 'bare', '--file', path, '-f', 'value',
            '-c', 'id', name).stdout.strip())
    return ids


def _flavor_ids():
    ids = []
    for name, ram in FLAVORS:
        ids.append(base.openstack(
            'flavor', 'create', '--public', '--ram', ram, '--disk', '1',
            '--vcpus', '1', '-f', 'value', '-c', 'id', name).stdout.strip())
    return ids


def _network_extensions():
    return base.openstack('extension', 'list', '--network', '-f', 'value',
                          '-c', 'Alias').stdout.split()


def config(image_ids, flavor_ids, extensions):
    """tempest.conf's sections for this cloud."""
    filters = nova.controller_config()['filter_scheduler'][
        'enabled_filters']
    return {
        'DEFAULT': {'log_dir': WORKSPACE / 'logs',
                    'log_file': 'tempest.log'},
        'oslo_concurrency': {'lock_path': WORKSPACE / 'locks'},
        'auth': {'use_dynamic_credentials': 'true',
                 # The servers boot without a network (--nic none).
                 'create_isolated_networks': 'false',
                 'admin_username': 'admin',
                 'admin_project_name': 'admin',
                 'admin_password': base.PASSWORD,
                 'admin_domain_name': 'Default'},
        'identity': {'uri_v3': control.AUTH_URL, 'auth_version': 'v3',
                     'region': control.REGION},
        'compute': {'image_ref': image_ids[0],
                    'image_ref_alt': image_ids[1],
                    'flavor_ref': flavor_ids[0],
                    'flavor_ref_alt': flavor_ids[1],
                    'min_compute_nodes': '2',
                    'min_microversion': '2.1',
                    'max_microversion': '2.105',
                    'build_timeout': '300'},
        'compute-feature-enabled': {
            'resize': 'true', 'cold_migration': 'true',
            'console_output': 'true', 'pause': 'true', 'suspend': 'true',
            'shelve': 'true', 'snapshot': 'true', 'rescue': 'true',
            # What this cloud cannot do: no shared storage or volumes for
            # live migration, no consoles but the serial log, no guest
            # agent, no ports for interface attach, no config drive.
            'live_migration': 'false', 'stable_rescue': 'false',
            'vnc_console': 'false', 'spice_console': 'false',
            'serial_console': 'false', 'change_password': 'false',
            'interface_attach': 'false', 'personality': 'false',
            'config_drive': 'false', 'metadata_service': 'false',
            'scheduler_enabled_filters': filters,
            'nova_policy_roles': 'admin,manager,member,reader'},
        'validation': {'run_validation': 'false'},
        'service_available': {'nova': 'true', 'glance': 'true',
                              'neutron': 'true', 'cinder': 'false',
                              'swift': 'false', 'horizon': 'false'},
        'network-feature-enabled': {'api_extensions': ','.join(extensions),
                                    'floating_ips': 'false'},
    }


def prepare():
    """The workspace and its tempest.conf, generated from the cloud."""
    ensure_venv()
    for sub in ('etc', 'logs', 'locks'):
        (WORKSPACE / sub).mkdir(parents=True, exist_ok=True)
    conf = base.write_config(WORKSPACE / 'etc' / 'tempest.conf', config(
        _upload_images(), _flavor_ids(), _network_extensions()))
    site = subprocess.run(
        [str(VENV_BIN / 'python'), '-c',
         'import os, tempest; print(os.path.dirname(tempest.__file__))'],
        capture_output=True, text=True, check=True).stdout.strip()
    (WORKSPACE / '.stestr.conf').write_text(
        '[DEFAULT]\ntest_path=%s/test_discover\ntop_dir=%s\n'
        'group_regex=([^\\.]*\\.)*\n' % (site, site.rsplit('/', 1)[0]))
    base.say('tempest: %s written from the running cloud' % conf)


def run(concurrency=2):
    """Run TESTS; print Tempest's own lines; return {Passed, Failed, ...}.

    Tempest prints one line per test as it ends (with a skip's reason) and
    its totals; the log of the run is ``STATE/tempest/run.log``.
    """
    prepare()
    regex = '^(?:%s)' % '|'.join(re.escape(test) for test in TESTS)
    base.say('tempest: running the compute API tests (%d patterns)' %
             len(TESTS))
    output = []
    with subprocess.Popen(
            [str(VENV_BIN / 'tempest'), 'run', '--regex', regex,
             '--concurrency', str(concurrency)],
            cwd=WORKSPACE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=dict(base.venv_env(
                TEMPEST_CONFIG_DIR=str(WORKSPACE / 'etc')),
                PATH='%s:/usr/bin:/bin' % VENV_BIN)) as proc:
        for line in proc.stdout:
            output.append(line)
            print('  ' + line.rstrip(), flush=True)
    (WORKSPACE / 'run.log').write_text(''.join(output))
    totals = {kind: int(n) for kind, n in _TOTAL.findall(''.join(output))}
    if not totals:
        raise RuntimeError('tempest printed no totals (exit %d); see %s' % (
            proc.returncode, WORKSPACE / 'run.log'))
    return totals
