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

"""tools/cloud: bring the real two-host cloud up, down, or show it.

  up      install what is missing (nova and the clients from the wheels
          of tools/workspace dist), start every service on empty state
          (the data of the last cloud is dropped), upload the guest image
          and create the vPMEM flavors (about 3 minutes once built)
  down    stop every process the cloud started, by pid; remove its
          namespaces, mounts, bridge and ssh client drop-in
  status  what runs, and Nova's view of its compute services

After ``up``, use the cloud as an operator would::

  export OS_CLIENT_CONFIG_FILE=.workspace/stack/clouds.yaml
  .workspace/stack/venv/bin/openstack --os-cloud admin server list
"""

import argparse
import shutil
import subprocess
import sys
import time

from e2e.stack import base
from e2e.stack import computes
from e2e.stack import control
from e2e.stack import guest_image
from e2e.stack import nova
from e2e.stack import venv

IMAGE = 'vpmem-guest'
# name, vPMEM label, vCPUs: pmem.large.2cpu lets a server on a LARGE
# namespace resize (and revert) onto the other host's LARGE namespace.
FLAVORS = (('pmem.small', 'SMALL', 1), ('pmem.large', 'LARGE', 1),
           ('pmem.large.2cpu', 'LARGE', 2))


def up(old_compute=False):
    """Bring the cloud up; old_compute adds hostC on unpatched Nova."""
    started = time.monotonic()
    subprocess.run([str(base.ROOT / 'tools' / 'setup-host')], check=True)
    for command in ('build', 'dist'):
        subprocess.run([sys.executable,
                        str(base.ROOT / 'tools' / 'workspace'), command],
                       check=True)
    venv.ensure()
    venv.ensure_old()
    paths = guest_image.build()
    down(quiet=True)            # leftovers of an interrupted run
    reset_state()
    base.ensure_bridge()
    control.up()
    computes.ensure_nova_user()
    for host in computes.ALL_HOSTS:
        host.create()
    known_hosts = computes.setup_ssh()
    for host in computes.ALL_HOSTS:
        host.start_platform()
    nova.start_controller()
    nova.start_computes(known_hosts, old_compute)
    upload_image(paths)
    create_flavors()
    base.say('up in %.0f s; OS_CLIENT_CONFIG_FILE=%s' % (
        time.monotonic() - started, base.CLOUDS_YAML))


def reset_state():
    """Start from an empty cloud: drop the data of the last one.

    Keeps only what is slow to make and does not change: the virtualenv
    and the guest image.
    """
    with open('/proc/self/mounts') as f:
        mounted = [line.split()[1] for line in f
                   if line.split()[1].startswith(str(base.STATE))]
    if mounted:
        raise RuntimeError('still mounted after tools/cloud down: %s' %
                           ', '.join(mounted))
    keep = {base.VENV_BIN.parent, base.OLD_VENV_BIN.parent,
            base.TEMPEST_VENV_BIN.parent,
            guest_image.IMAGE}
    if base.STATE.is_dir():
        for path in base.STATE.iterdir():
            if path not in keep:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()


def upload_image(paths, name=IMAGE):
    """The guest as kernel, ramdisk and machine images, like an AMI."""
    ids = {}
    for kind, part in (('aki', 'kernel'), ('ari', 'ramdisk')):
        ids[part] = base.openstack(
            'image', 'create', '--public', '--disk-format', kind,
            '--container-format', kind, '--file', paths[part],
            '-f', 'value', '-c', 'id', '%s-%s' % (name, part)
        ).stdout.strip()
    base.openstack('image', 'create', '--public', '--disk-format', 'ami',
                   '--container-format', 'ami', '--file', paths['disk'],
                   '--property', 'kernel_id=%s' % ids['kernel'],
                   '--property', 'ramdisk_id=%s' % ids['ramdisk'], name)
    base.say('image %s uploaded' % name)


def create_flavors():
    for name, label, vcpus in FLAVORS:
        base.openstack('flavor', 'create', '--public', '--ram', '512',
                       '--disk', '1', '--vcpus', vcpus, '--property',
                       'hw:pmem=%s' % label, name)
    base.say('flavors %s created' % ', '.join(f[0] for f in FLAVORS))


def down(quiet=False):
    if not quiet:
        base.say('stopping every process the cloud started')
    nova.stop()
    computes.teardown()
    control.down()
    for name in base.started_names():       # anything left
        base.stop(name)
    base.remove_bridge()


def status():
    names = base.started_names()
    for name in names:
        print('%-24s %s' % (name, 'running' if base.running(name)
                            else 'NOT running'))
    if not names:
        print('the cloud is down')
        return 1
    print(base.openstack('compute', 'service', 'list', check=False).stdout)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='tools/cloud', description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('command', choices=('up', 'down', 'status'))
    parser.add_argument('--old-compute', action='store_true',
                        help='with up: also hostC, a compute running '
                             'unpatched Nova 34.0.0 (a rolling upgrade)')
    args = parser.parse_args(argv)
    if args.command == 'up':
        try:
            up(old_compute=args.old_compute)
        except BaseException:
            base.say('up failed; logs in %s; tearing down' % base.LOGS)
            down(quiet=True)
            raise
        return 0
    if args.command == 'down':
        down()
        return 0
    return status()
