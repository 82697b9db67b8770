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

"""Two compute "hosts": Linux network namespaces, each running a real sshd.

Every host gets a network namespace, a veth pair whose outer end sits on a
bridge in the root namespace (the bridge holds the gateway address, so the
Nova process in the root namespace reaches both hosts), its own sshd host
key, and an sshd that accepts only root with the environment's key.

The ssh client side is configured the way an operator configures Nova's
migration ssh: a drop-in file under /etc/ssh/ssh_config.d/ (OpenSSH reads
~/.ssh of the passwd home, not $HOME, so a drop-in is the clean way) with
one ``Host`` block per host address that names the identity, pins the host
key in a known_hosts file, and sets BatchMode and StrictHostKeyChecking.
Host-key checking is never turned off.

Without network namespaces the hosts fall back to two sshd on distinct
loopback ports (``HostPair.mode`` says which one is in use).
"""

import os
import pathlib
import shutil
import signal
import subprocess
import time

SSH_DROPIN = pathlib.Path('/etc/ssh/ssh_config.d/nova-e2e.conf')
BRIDGE = 'ne2e-br0'
GATEWAY = '10.77.0.1'
PREFIX_LEN = 24
SSHD = '/usr/sbin/sshd'


def run(*argv, check=True, **kwargs):
    """Run argv (never a shell) and return the CompletedProcess."""
    return subprocess.run(argv, check=check, capture_output=True, text=True,
                          **kwargs)


def netns_available():
    probe = 'ne2e-probe'
    try:
        run('ip', 'netns', 'add', probe)
    except (OSError, subprocess.CalledProcessError):
        return False
    run('ip', 'netns', 'del', probe, check=False)
    return True


class Host(object):
    """One compute host: an address, a namespace and an sshd."""

    bridge = BRIDGE
    gateway = GATEWAY

    def __init__(self, name, root, address, port=22, netns=None,
                 veth=None):
        self.name = name            # 'hostA'
        self.root = pathlib.Path(root)  # this host's directory
        self.address = address      # what Nova ssh-es to
        self.port = port
        self.netns = netns          # None in loopback mode
        self.veth = veth            # the root-namespace end of the veth
        self.sshd_pid = None

    @property
    def ssh_dir(self):
        return self.root / 'ssh'

    @property
    def host_key(self):
        return self.ssh_dir / 'ssh_host_ed25519_key'

    def _in_ns(self, *argv):
        if self.netns:
            return ('ip', 'netns', 'exec', self.netns) + argv
        return argv

    def create_network(self, index):
        if not self.netns:
            return
        peer = self.veth[:-1] + 'p'
        run('ip', 'netns', 'add', self.netns)
        run('ip', 'link', 'add', self.veth, 'type', 'veth', 'peer', 'name',
            peer)
        run('ip', 'link', 'set', peer, 'netns', self.netns)
        run('ip', 'link', 'set', self.veth, 'master', self.bridge)
        run('ip', 'link', 'set', self.veth, 'up')
        run(*self._in_ns('ip', 'link', 'set', 'lo', 'up'))
        run(*self._in_ns('ip', 'addr', 'add',
                         '%s/%d' % (self.address, PREFIX_LEN), 'dev', peer))
        run(*self._in_ns('ip', 'link', 'set', peer, 'up'))
        run(*self._in_ns('ip', 'route', 'add', 'default', 'via', self.gateway))

    def write_sshd_config(self, client_pubkey, path_dirs, environment):
        """sshd config: key-only root login, own host key, own address.

        ``SetEnv`` gives remote commands this host's PATH (where the daxio
        stand-in and the copy helper live) and environment.
        """
        self.ssh_dir.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            run('ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C',
                'nova-e2e %s host key' % self.name, '-f', str(self.host_key))
        auth_keys = self.ssh_dir / 'authorized_keys'
        auth_keys.write_text(client_pubkey)
        auth_keys.chmod(0o600)
        env = dict(environment)
        env['PATH'] = ':'.join(
            [str(d) for d in path_dirs] +
            ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin',
             '/sbin', '/bin'])
        set_env = ' '.join('%s=%s' % item for item in sorted(env.items()))
        config = self.ssh_dir / 'sshd_config'
        config.write_text('\n'.join([
            'ListenAddress %s:%d' % (self.address, self.port),
            'HostKey %s' % self.host_key,
            'PidFile %s' % (self.ssh_dir / 'sshd.pid'),
            'AuthorizedKeysFile %s' % auth_keys,
            'PermitRootLogin prohibit-password',
            'PubkeyAuthentication yes',
            'PasswordAuthentication no',
            'KbdInteractiveAuthentication no',
            'UsePAM no',
            'StrictModes no',
            'X11Forwarding no',
            'AllowTcpForwarding no',
            # scp uses the SFTP protocol since OpenSSH 9.0 (Nova's
            # resize copies disks with scp).
            'Subsystem sftp internal-sftp',
            'PrintMotd no',
            'LogLevel ERROR',
            'SetEnv %s' % set_env,
            '',
        ]))
        return config

    def start_sshd(self):
        pathlib.Path('/run/sshd').mkdir(exist_ok=True)   # privsep directory
        config = self.ssh_dir / 'sshd_config'
        log = self.ssh_dir / 'sshd.log'
        # -D keeps it in the foreground so its pid is ours to stop; -E logs.
        proc = subprocess.Popen(
            self._in_ns(SSHD, '-D', '-f', str(config), '-E', str(log)),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        self.sshd_pid = proc.pid
        self._sshd_proc = proc
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = run(*self._in_ns('ssh-keyscan', '-T', '1', '-p',
                                     str(self.port), '-t', 'ed25519',
                                     self.address), check=False)
            if probe.stdout.strip():
                return
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError('sshd of %s did not start, see %s' % (
            self.name, log))

    def stop_sshd(self):
        """Stop this host's sshd (and, being its session, its children)."""
        proc = getattr(self, '_sshd_proc', None)
        if proc is None:
            self._stop_leftover_sshd()
            return
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)

    def _stop_leftover_sshd(self):
        """Stop the sshd an interrupted earlier run left (its pid file)."""
        pidfile = self.ssh_dir / 'sshd.pid'
        if not pidfile.exists():
            return
        try:
            pid = int(pidfile.read_text().split()[0])
            cmdline = pathlib.Path('/proc/%d/cmdline' % pid).read_bytes()
        except (ValueError, IndexError, OSError):
            return
        if str(self.ssh_dir).encode() in cmdline:     # really ours
            os.kill(pid, signal.SIGTERM)

    def _descendants(self, pid):
        children = {}
        for stat in pathlib.Path('/proc').glob('[0-9]*/stat'):
            try:
                text = stat.read_text()
            except OSError:
                continue
            fields = text[text.rindex(')') + 2:].split()
            children.setdefault(int(fields[1]), []).append(
                int(stat.parent.name))
        found, todo = [], [pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found

    def kill_ssh_sessions(self):
        """Cut every ssh connection to this host, keep the listener.

        Kills the listener's descendants: the per-connection sshd processes
        and the commands they run.
        """
        killed = 0
        for pid in self._descendants(self.sshd_pid):
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        return killed

    def link(self, up):
        """Take the host off the network (or put it back)."""
        if self.veth:
            run('ip', 'link', 'set', self.veth, 'up' if up else 'down')
        elif not up:
            self.stop_sshd()
        else:
            self.start_sshd()

    def public_host_key(self):
        return (self.ssh_dir / 'ssh_host_ed25519_key.pub').read_text()

    def destroy_network(self):
        if self.netns:
            run('ip', 'netns', 'del', self.netns, check=False)
            run('ip', 'link', 'del', self.veth, check=False)


class HostPair(object):
    """Set up and tear down the two hosts and the ssh client drop-in."""

    def __init__(self, base, path_dirs=(), environment_for=None,
                 use_netns=None):
        self.base = pathlib.Path(base)
        self.client_dir = self.base / 'client'
        self.known_hosts = self.client_dir / 'known_hosts'
        self.identity = self.client_dir / 'id_ed25519'
        if use_netns is None:
            use_netns = netns_available()
        self.mode = 'netns' if use_netns else 'loopback'
        if use_netns:
            self.a = Host('hostA', self.base / 'hostA', '10.77.0.11',
                          netns='nova-e2e-a', veth='ne2e-a0')
            self.b = Host('hostB', self.base / 'hostB', '10.77.0.12',
                          netns='nova-e2e-b', veth='ne2e-b0')
        else:
            # Two sshd on distinct loopback addresses and ports: the copier
            # still reaches the destination through real ssh.
            self.a = Host('hostA', self.base / 'hostA', '127.0.0.11',
                          port=2211)
            self.b = Host('hostB', self.base / 'hostB', '127.0.0.12',
                          port=2212)
        self.path_dirs = list(path_dirs)
        self.environment_for = environment_for or (lambda host: {})

    @property
    def hosts(self):
        return (self.a, self.b)

    def setup(self):
        self.teardown()          # leftovers of an interrupted run
        self.client_dir.mkdir(parents=True, exist_ok=True)
        run('ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C',
            'nova-e2e migration key', '-f', str(self.identity))
        pubkey = self.identity.with_suffix('.pub').read_text()
        if self.mode == 'netns':
            run('ip', 'link', 'add', BRIDGE, 'type', 'bridge')
            run('ip', 'addr', 'add', '%s/%d' % (GATEWAY, PREFIX_LEN), 'dev',
                BRIDGE)
            run('ip', 'link', 'set', BRIDGE, 'up')
        for index, host in enumerate(self.hosts):
            host.create_network(index)
            host.write_sshd_config(pubkey, self.path_dirs,
                                   self.environment_for(host))
            host.start_sshd()
        self.write_known_hosts()
        self.write_ssh_dropin()

    def write_known_hosts(self, keys=None):
        """Pin each host's key (``keys`` maps host name -> key line)."""
        lines = []
        for host in self.hosts:
            key = (keys or {}).get(host.name) or host.public_host_key()
            name = (host.address if host.port == 22 else
                    '[%s]:%d' % (host.address, host.port))
            lines.append('%s %s' % (name, ' '.join(key.split()[:2])))
        self.known_hosts.write_text('\n'.join(lines) + '\n')

    def write_ssh_dropin(self, strict=True):
        """Write the ssh client config of the nova user.

        ``strict=False`` writes the unsafe one that some deployment guides
        set for migrations.
        """
        blocks = ['# Written by the nova end-to-end harness (e2e/hosts.py);',
                  '# removed at teardown.']
        for host in self.hosts:
            blocks += [
                'Host %s' % host.address,
                '    Port %d' % host.port,
                '    User root',
                '    IdentityFile %s' % self.identity,
                '    IdentitiesOnly yes',
                '    UserKnownHostsFile %s' % self.known_hosts,
                '    GlobalKnownHostsFile /dev/null',
                '    BatchMode yes',
                '    StrictHostKeyChecking %s' % ('yes' if strict else 'no'),
                '    ConnectTimeout 5',
                '    ServerAliveInterval 2',
                '    ServerAliveCountMax 3',
            ]
        SSH_DROPIN.write_text('\n'.join(blocks) + '\n')

    def check_ssh(self, host):
        """Run ``ssh <host> true`` the way Nova does (BatchMode, key)."""
        return run('ssh', '-o', 'BatchMode=yes', host.address, 'true',
                   check=False)

    def teardown(self):
        for host in self.hosts:
            if host.sshd_pid:
                host.kill_ssh_sessions()
            host.stop_sshd()
            host.destroy_network()
        if self.mode == 'netns':
            run('ip', 'link', 'del', BRIDGE, check=False)
        if SSH_DROPIN.exists():
            SSH_DROPIN.unlink()
        shutil.rmtree(self.client_dir, ignore_errors=True)
        for host in self.hosts:
            shutil.rmtree(host.ssh_dir, ignore_errors=True)
