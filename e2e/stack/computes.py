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

"""The two compute hosts of the cloud.

A host is a network namespace (its own address on the controller's bridge)
and a mount namespace of its own, kept alive by a bind mount of
``/proc/PID/ns/mnt``-style file under ``STATE/ns``. Every process of the
host (sshd, virtlogd, libvirtd, nova-compute, and what they start: QEMU,
privsep, the copy helper under sudo) runs in both, so in its file system:

- ``/run`` is a tmpfs of its own (libvirt's sockets and pid files);
- ``/etc/nova``, ``/etc/libvirt``, ``/var/lib/nova``, ``/var/lib/libvirt``,
  ``/var/log/libvirt`` and ``/var/cache/libvirt`` are this host's
  directories under ``STATE/hosts/<host>``;
- ``/dev`` is a tmpfs with the usual character devices plus this host's
  vPMEM namespaces only, ``/dev/dax<region>.<n>``: regular files (there is
  no PMEM hardware here) bind-mounted from ``STATE/hosts/<host>/pmem``.

As in a real deployment, nova-compute runs as the unprivileged ``nova``
user (created for the cloud when the machine has none), whose home is the
host's ``/var/lib/nova``: it reaches libvirtd through libvirtd's socket
group, starts privsep and the copy helper with ``sudo`` by the rules of the
host's ``/etc/sudoers.d/nova`` (the admin guide's), and logs in to the other
hosts as ``nova`` with its own copies of the migration key and of the copy's
key, which sshd accepts only through the admin guide's forced command.

STAND-INS (no PMEM hardware on these machines), bind-mounted in the host's
mount namespace only:

- ``/usr/bin/ndctl``: prints this host's namespaces for ``ndctl list -X``,
  which is all Nova and the copy helper ask of it;
- ``/usr/bin/daxio``: ``e2e/bin/daxio``, daxio's command line on regular
  files (real daxio refuses anything but device-DAX). Nova zeroes
  namespaces with it.
"""

import json
import os
import pathlib
import pwd
import shutil
import signal

from e2e.stack import base
from e2e.stack import hosts

MIB = 1024 * 1024
# A namespace must be a multiple of 16 MiB plus the 2 MiB label area for the
# guest kernel to create a device-DAX namespace on it.
SMALL_SIZE = 130 * MIB
LARGE_SIZE = 258 * MIB
LAYOUT = (('SMALL', 'ns_0', SMALL_SIZE), ('SMALL', 'ns_1', SMALL_SIZE),
          ('LARGE', 'ns_2', LARGE_SIZE))
PMEM_NAMESPACES_OPTION = 'SMALL:ns_0|ns_1,LARGE:ns_2'
NS_DIR = base.STATE / 'ns'
ALIGN = 2 * 1024 * 1024
CLIENT_DIR = base.STATE / 'client'
COPY_KEY = CLIENT_DIR / 'id_vpmem_copy'
E2E_BIN = pathlib.Path(__file__).resolve().parents[1] / 'bin'
# Character devices QEMU, libvirt, sshd and sudo need in the host's /dev.
DEVICES = (('null', 1, 3), ('zero', 1, 5), ('full', 1, 7), ('random', 1, 8),
           ('urandom', 1, 9), ('tty', 5, 0), ('net/tun', 10, 200))
# /etc/ssh/ssh_config.d and /etc/sudoers.d too: each host's ssh client
# config and sudo rules are its own, and nothing is written to the
# machine's.
PRIVATE_DIRS = ('/etc/nova', '/etc/libvirt', '/var/lib/nova',
                '/var/lib/libvirt', '/var/log/libvirt', '/var/cache/libvirt',
                '/etc/ssh/ssh_config.d', '/etc/sudoers.d')
# The user nova-compute runs as, and its home: the host's /var/lib/nova.
NOVA_USER = 'nova'
NOVA_HOME = pathlib.Path('/var/lib/nova')
MIGRATION_KEY_IN_HOME = NOVA_HOME / '.ssh' / 'id_ed25519'
COPY_KEY_IN_HOME = NOVA_HOME / '.ssh' / 'id_vpmem_copy'
# Set when the cloud created the nova user, which teardown then removes.
CREATED_USER_MARK = base.STATE / 'created-nova-user'
# The admin guide's rules (doc/source/admin/virtual-persistent-memory.rst),
# with this host's paths, and the privsep helper's, which nova-compute
# starts through sudo (nova's packages use rootwrap for it).
SUDOERS = '''# nova stack (tools/cloud): what nova-compute may run as root.
nova ALL = (root) NOPASSWD: {bin}/python -I -m nova.cmd.vpmem_copy *
nova ALL = (root) NOPASSWD: {bin}/privsep-helper
'''
LIBVIRTD_CONF = '''
# nova stack (tools/cloud): nova-compute, as the nova user, manages guests
# through the read-write socket, which its group may use.
unix_sock_group = "nova"
unix_sock_rw_perms = "0770"
auth_unix_rw = "none"
'''

QEMU_CONF = '''
# nova stack (tools/cloud): QEMU runs as root without a security driver,
# and libvirt gives no domain a /dev of its own: the vPMEM "devices" of this
# host are regular files bind-mounted on /dev in the host's mount namespace.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
'''
NDCTL_STAND_IN = '''#!/bin/sh
# STAND-IN FOR ndctl(1), nova stack (tools/cloud) only: there is no PMEM
# hardware here. Prints this host's namespaces for "ndctl list -X", the only
# command Nova and nova-vpmem-copy run; bind-mounted on /usr/bin/ndctl in
# this host's mount namespace only.
if [ "$*" = "list -X" ]; then
    exec cat /etc/nova/ndctl-list.json
fi
echo "ndctl stand-in: only 'list -X' is supported" >&2
exit 2
'''


class Namespace(object):
    """One vPMEM namespace of a host: a file bind-mounted on /dev/daxR.N."""

    def __init__(self, name, label, devpath, backing, size, chardev):
        self.name = name
        self.label = label
        self.devpath = devpath      # /dev/daxR.N, what Nova sees
        self.backing = backing      # the regular file on the host's tmpfs
        self.size = size
        self.chardev = chardev

    def ndctl(self, region):
        """This namespace as one entry of ``ndctl list -X``."""
        return {
            'dev': 'namespace%d.%s' % (region, self.chardev.split('.')[1]),
            'mode': 'devdax', 'map': 'dev', 'size': self.size,
            'uuid': '00000000-0000-4000-8000-%012d' % (
                region * 100 + int(self.chardev.split('.')[1])),
            'daxregion': {'id': region, 'size': self.size, 'align': ALIGN,
                          'devices': [{'chardev': self.chardev,
                                       'size': self.size}]},
            'name': self.name, 'numa_node': 0,
        }


class ComputeHost(hosts.Host):
    """One compute host: network and mount namespace, sshd, libvirt, nova."""

    bridge = base.BRIDGE
    gateway = base.CONTROLLER

    def __init__(self, name, address, region, venv_bin=base.VENV_BIN):
        super().__init__(name, base.STATE / 'hosts' / name, address,
                         netns='nstack-%s' % name[-1].lower(),
                         veth='nstack-%s0' % name[-1].lower())
        self.region = region
        self.venv_bin = venv_bin        # the Nova this host runs
        self.mount_ns = NS_DIR / name
        self.uts_ns = NS_DIR / ('%s.uts' % name)
        self.namespaces = [
            Namespace(ns_name, label, '/dev/dax%d.%d' % (region, n),
                      self.root / 'pmem' / ('dax%d.%d' % (region, n)),
                      size, 'dax%d.%d' % (region, n))
            for n, (label, ns_name, size) in enumerate(LAYOUT)]

    def _in_ns(self, *argv):
        return ('nsenter', '--mount=%s' % self.mount_ns,
                '--uts=%s' % self.uts_ns,
                '--net=/run/netns/%s' % self.netns, '--') + argv

    def private(self, path):
        """This host's directory behind a private path such as /etc/nova."""
        return self.root / path.strip('/').replace('/', '-')

    # -- setting up -------------------------------------------------------

    def create(self):
        base.say('%s: namespaces, /dev and private directories' % self.name)
        self._mount_pmem_storage()
        self._create_mount_namespace()
        self.create_network()
        self._mount('-t', 'tmpfs', '-o', 'mode=0755', 'run', '/run')
        self._write_libvirt_config()
        for path in PRIVATE_DIRS:
            self.private(path).mkdir(parents=True, exist_ok=True)
            # An empty mount point in the shared root file system (removed
            # at teardown when it was ours and is still empty).
            os.makedirs(path, exist_ok=True)
            self._mount('--bind', self.private(path), path)
        self._write_nova_home()
        self._make_dev()
        self._write_hosts_file()
        self._write_stand_ins()

    def _write_nova_home(self):
        """The nova user's /var/lib/nova and its sudo rules."""
        nova = pwd.getpwnam(NOVA_USER)
        home = self.private(str(NOVA_HOME))
        for path in (home, home / 'instances', home / '.ssh'):
            path.mkdir(exist_ok=True)
            os.chown(path, nova.pw_uid, nova.pw_gid)
        (home / '.ssh').chmod(0o700)
        sudoers = self.private('/etc/sudoers.d') / 'nova'
        sudoers.write_text(SUDOERS.format(bin=self.venv_bin))
        sudoers.chmod(0o440)
        # The deployment guide's syntax check of the file.
        base.run('visudo', '-cf', str(sudoers))

    def _mount_pmem_storage(self):
        """A tmpfs that holds exactly this host's namespaces.

        Memory, like PMEM: on a disk file every msync() of the copy helper
        (its persist step) would be a disk write. Mounted before the mount
        namespaces are made, so that they all share it.
        """
        pmem = self.root / 'pmem'
        pmem.mkdir(parents=True, exist_ok=True)
        if not base.is_mountpoint(pmem):
            total = sum(ns.size for ns in self.namespaces)
            base.run('mount', '-t', 'tmpfs', '-o', 'size=%d,mode=0700' % (
                total + MIB), 'nstack-pmem', str(pmem))

    def _create_mount_namespace(self):
        NS_DIR.mkdir(parents=True, exist_ok=True)
        # A mount namespace is pinned by a bind mount of its nsfs file; the
        # directory holding it must not propagate mounts.
        if not base.is_mountpoint(NS_DIR):
            base.run('mount', '--bind', str(NS_DIR), str(NS_DIR))
            base.run('mount', '--make-private', str(NS_DIR))
        self.mount_ns.touch()
        base.run('unshare', '--mount=%s' % self.mount_ns,
                 '--propagation', 'private', 'true')
        # Its own host name: libvirt reports it, and Nova names the
        # compute node after it.
        self.uts_ns.touch()
        base.run('unshare', '--uts=%s' % self.uts_ns, 'hostname', self.name)

    def _mount(self, *argv):
        self.run_in('mount', *argv)

    def _make_dev(self):
        """A /dev with the usual devices and this host's namespaces only."""
        self._mount('-t', 'tmpfs', '-o', 'mode=0755,size=1m', 'dev', '/dev')
        for name, major, minor in DEVICES:
            if name.startswith('net/'):
                self.run_in('mkdir', '-p', '/dev/net')
            self.run_in('mknod', '-m', '0666', '/dev/' + name, 'c', major,
                        minor)
        for path in ('/dev/pts', '/dev/shm'):
            self.run_in('mkdir', path)
        self._mount('-t', 'devpts', '-o', 'newinstance,ptmxmode=0666',
                    'devpts', '/dev/pts')
        self._mount('-t', 'tmpfs', 'shm', '/dev/shm')
        for link, target in (('ptmx', 'pts/ptmx'), ('fd', '/proc/self/fd'),
                             ('stdin', '/proc/self/fd/0'),
                             ('stdout', '/proc/self/fd/1'),
                             ('stderr', '/proc/self/fd/2')):
            self.run_in('ln', '-s', target, '/dev/' + link)
        for ns in self.namespaces:
            with open(ns.backing, 'wb') as f:
                f.truncate(ns.size)         # sparse: a zeroed namespace
            self.run_in('touch', ns.devpath)
            self._mount('--bind', ns.backing, ns.devpath)

    def _write_libvirt_config(self):
        etc = self.private('/etc/libvirt')
        shutil.rmtree(etc, ignore_errors=True)
        shutil.copytree('/etc/libvirt', etc, symlinks=True)
        # No default network: there is no dnsmasq, and guests boot --nic none.
        shutil.rmtree(etc / 'qemu' / 'networks' / 'autostart',
                      ignore_errors=True)
        with open(etc / 'qemu.conf', 'a') as f:
            f.write(QEMU_CONF)
        with open(etc / 'libvirtd.conf', 'a') as f:
            f.write(LIBVIRTD_CONF)

    def _write_hosts_file(self):
        """Its own /etc/hosts and resolv.conf.

        sudo looks its host name up, and without an answer it waits out a
        DNS timeout (20 s) on every call.
        """
        hosts_file = self.root / 'hosts'
        hosts_file.write_text(''.join(
            ['127.0.0.1 localhost\n', '%s controller\n' % base.CONTROLLER] +
            ['%s %s\n' % (h.address, h.name) for h in ALL_HOSTS]))
        self._mount('--bind', hosts_file, '/etc/hosts')
        # No DNS server is reachable from the host's network: fail lookups
        # at once (no nameserver means 127.0.0.1, which refuses).
        resolv = self.root / 'resolv.conf'
        resolv.write_text('# nova stack test host: no DNS\n')
        self._mount('--bind', resolv, '/etc/resolv.conf')

    def _write_stand_ins(self):
        etc_nova = self.private('/etc/nova')
        (etc_nova / 'ndctl-list.json').write_text(json.dumps(
            [ns.ndctl(self.region) for ns in self.namespaces], indent=1))
        ndctl = self.root / 'ndctl-stand-in'
        ndctl.write_text(NDCTL_STAND_IN)
        ndctl.chmod(0o755)
        self._mount('--bind', ndctl, '/usr/bin/ndctl')
        self._mount('--bind', E2E_BIN / 'daxio', '/usr/bin/daxio')

    # -- services ---------------------------------------------------------

    def service(self, what):
        return '%s-%s' % (what, self.name)

    def start_platform(self):
        """virtlogd, libvirtd and sshd: what the host runs besides Nova."""
        self.run_in('mkdir', '-p', '/run/sshd')
        base.start(self.service('virtlogd'), self._in_ns('virtlogd'))
        base.start(self.service('libvirtd'), self._in_ns('libvirtd'))
        base.wait_for('libvirtd of %s' % self.name, lambda: self.run_in(
            'virsh', '-c', 'qemu:///system', 'version', check=False
        ).returncode == 0, timeout=60, name=self.service('libvirtd'))
        base.start(self.service('sshd'), self._in_ns(
            hosts.SSHD, '-D', '-f', self.ssh_dir / 'sshd_config',
            '-E', self.ssh_dir / 'sshd.log'))
        base.wait_for('sshd of %s' % self.name, lambda: base.port_open(
            self.address, self.port), timeout=30, name=self.service('sshd'))

    def start_nova_compute(self, nova_conf_sections):
        nova = pwd.getpwnam(NOVA_USER)
        conf = base.write_config(self.private('/etc/nova') / 'nova.conf',
                                 nova_conf_sections)
        # Root's, as the copy helper requires; nova may read it.
        os.chown(conf, 0, nova.pw_gid)
        conf.chmod(0o640)
        env = dict(base.venv_env(), HOME=str(NOVA_HOME), USER=NOVA_USER,
                   LOGNAME=NOVA_USER)
        base.start(self.service('nova-compute'), self._in_ns(
            'setpriv', '--reuid', NOVA_USER, '--regid', NOVA_USER,
            '--init-groups', '--',
            self.venv_bin / 'nova-compute', '--config-file',
            '/etc/nova/nova.conf'), env=env)

    def run_in(self, *argv, check=True):
        """Run argv on this host (in its namespaces)."""
        return base.run(*self._in_ns(*[str(a) for a in argv]), check=check)

    def stop_services(self):
        for what in ('nova-compute', 'sshd', 'libvirtd', 'virtlogd'):
            base.stop(self.service(what))

    def destroy(self):
        self.stop_services()
        self._kill_leftovers()
        self.destroy_network()
        for pinned in (self.mount_ns, self.uts_ns):
            if os.path.ismount(pinned):
                base.run('umount', str(pinned), check=False)
        if base.is_mountpoint(self.root / 'pmem'):
            base.run('umount', str(self.root / 'pmem'), check=False)

    def _kill_leftovers(self):
        """Kill what still runs in this host's mount namespace.

        QEMU daemonizes out of libvirtd's process group, and privsep
        daemons and copy helpers may outlive nova-compute; all of them are
        recognised by their mount namespace.
        """
        if not os.path.ismount(self.mount_ns):
            return
        wanted = 'mnt:[%d]' % os.stat(self.mount_ns).st_ino
        for proc in pathlib.Path('/proc').glob('[0-9]*'):
            try:
                if os.readlink(proc / 'ns' / 'mnt') == wanted:
                    os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                continue


HOSTS = (ComputeHost('hostA', '10.78.0.11', 0),
         ComputeHost('hostB', '10.78.0.12', 1))
# A compute that runs UNPATCHED Nova 34.0.0: it joins the cloud only in the
# rolling-upgrade tests (e2e/stack/upgrade.py).
OLD_HOST = ComputeHost('hostC', '10.78.0.13', 2, venv_bin=base.OLD_VENV_BIN)
ALL_HOSTS = HOSTS + (OLD_HOST,)


def ensure_nova_user():
    """The nova user, as a distribution's nova package creates it."""
    try:
        pwd.getpwnam(NOVA_USER)
    except KeyError:
        # No password, but not locked ("!"): sshd lets no locked account
        # in, even with a key.
        base.run('useradd', '--system', '--user-group', '--no-create-home',
                 '--home-dir', str(NOVA_HOME), '--shell', '/bin/sh',
                 '--password', '*', NOVA_USER)
        CREATED_USER_MARK.touch()


def setup_ssh():
    """The migration key, each host's sshd and the client's pinned keys."""
    CLIENT_DIR.mkdir(parents=True, exist_ok=True)
    identity = CLIENT_DIR / 'id_ed25519'
    if not identity.exists():
        base.run('ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C',
                 'nova stack migration key', '-f', str(identity))
    pubkey = identity.with_suffix('.pub').read_text()
    # The vPMEM copy's own key, restricted to the helper's ssh gate, as the
    # admin guide sets it up.
    if not COPY_KEY.exists():
        base.run('ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C',
                 'nova stack vPMEM copy key', '-f', str(COPY_KEY))
    copy_pubkey = COPY_KEY.with_suffix('.pub').read_text().strip()
    for host in ALL_HOSTS:
        gate = ('restrict,command="%s sudo -n %s -I -m nova.cmd.vpmem_copy" '
                '%s\n' % (host.venv_bin / 'nova-vpmem-copy-gate',
                          host.venv_bin / 'python', copy_pubkey))
        host.write_sshd_config(pubkey + gate, [host.venv_bin], {},
                               user=NOVA_USER)
        _install_keys(host, identity)
    known_hosts = CLIENT_DIR / 'known_hosts'
    known_hosts.write_text(''.join(
        '%s %s\n' % (host.address,
                     ' '.join(host.public_host_key().split()[:2]))
        for host in ALL_HOSTS))
    blocks = ['# Written by tools/cloud (e2e/stack/computes.py) into this',
              "# host's private /etc/ssh/ssh_config.d. Host keys are pinned."]
    for host in ALL_HOSTS:
        blocks += ['Host %s' % host.address, '    User %s' % NOVA_USER,
                   '    IdentityFile %s' % MIGRATION_KEY_IN_HOME,
                   '    IdentitiesOnly yes',
                   '    UserKnownHostsFile %s' % known_hosts,
                   '    GlobalKnownHostsFile /dev/null', '    BatchMode yes',
                   '    StrictHostKeyChecking yes', '    ConnectTimeout 5']
    for host in ALL_HOSTS:
        host.private('/etc/ssh/ssh_config.d').joinpath(
            'nova-stack.conf').write_text('\n'.join(blocks) + '\n')
    return known_hosts


def _install_keys(host, identity):
    """The nova user's own copies of the migration and the copy keys."""
    nova = pwd.getpwnam(NOVA_USER)
    for source, target in ((identity, MIGRATION_KEY_IN_HOME),
                           (COPY_KEY, COPY_KEY_IN_HOME)):
        path = host.private(str(NOVA_HOME)) / target.relative_to(NOVA_HOME)
        shutil.copyfile(source, path)
        os.chown(path, nova.pw_uid, nova.pw_gid)
        path.chmod(0o600)


def teardown():
    for host in ALL_HOSTS:
        host.destroy()
    if CREATED_USER_MARK.exists():
        base.run('userdel', NOVA_USER, check=False)
        CREATED_USER_MARK.unlink()
    for path in ('/etc/nova', '/var/lib/nova'):
        try:
            os.rmdir(path)          # only when empty: then it was ours
        except OSError:
            pass
    if base.is_mountpoint(NS_DIR):
        base.run('umount', '--recursive', str(NS_DIR), check=False)
