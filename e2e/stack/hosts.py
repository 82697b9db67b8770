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

"""A compute host's network namespace and sshd configuration.

Every host gets a network namespace and a veth pair whose outer end sits on
the cloud's bridge in the root namespace (the bridge holds the gateway
address, so the control plane in the root namespace reaches every host),
its own sshd host key, and an sshd configuration that accepts only one
user (nova on the cloud's compute hosts) with the cloud's keys.
``e2e.stack.computes.ComputeHost`` builds the rest of a compute host on
this.
"""

import pathlib
import subprocess

PREFIX_LEN = 24
SSHD = '/usr/sbin/sshd'


def run(*argv, check=True, **kwargs):
    """Run argv (never a shell) and return the CompletedProcess."""
    return subprocess.run(argv, check=check, capture_output=True, text=True,
                          **kwargs)


class Host(object):
    """One host: an address, a network namespace and an sshd config."""

    bridge = None               # the bridge and gateway of the cloud
    gateway = None

    def __init__(self, name, root, address, port=22, netns=None,
                 veth=None):
        self.name = name            # 'hostA'
        self.root = pathlib.Path(root)  # this host's directory
        self.address = address      # what Nova ssh-es to
        self.port = port
        self.netns = netns
        self.veth = veth            # the root-namespace end of the veth

    @property
    def ssh_dir(self):
        return self.root / 'ssh'

    @property
    def host_key(self):
        return self.ssh_dir / 'ssh_host_ed25519_key'

    def _in_ns(self, *argv):
        return ('ip', 'netns', 'exec', self.netns) + argv

    def create_network(self):
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

    def write_sshd_config(self, client_pubkey, path_dirs, environment,
                          user='root'):
        """sshd config: key-only login of user, own host key, own address.

        ``SetEnv`` gives remote commands this host's PATH (where the daxio
        stand-in and the copy helper live) and environment.
        """
        self.ssh_dir.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            run('ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C',
                'nova stack %s host key' % self.name, '-f', str(self.host_key))
        auth_keys = self.ssh_dir / 'authorized_keys'
        auth_keys.write_text(client_pubkey)
        # sshd reads it with the user's privileges.
        auth_keys.chmod(0o644)
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
            'AllowUsers %s' % user,
            'PermitRootLogin %s' % (
                'prohibit-password' if user == 'root' else 'no'),
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

    def public_host_key(self):
        return (self.ssh_dir / 'ssh_host_ed25519_key.pub').read_text()

    def destroy_network(self):
        if self.netns:
            run('ip', 'netns', 'del', self.netns, check=False)
            run('ip', 'link', 'del', self.veth, check=False)
