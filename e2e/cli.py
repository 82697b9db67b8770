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

"""Run the real ``openstack`` CLI (python-openstackclient) against the API.

Auth is keystoneauth's ``admin_token`` plugin: a fixed token sent to a fixed
endpoint, the compute API's real HTTP listener on loopback.
"""

import json
import os
import pathlib
import shlex
import sys

# Green, because the API this CLI talks to runs in this very process under
# eventlet, as in Nova's functional tests.
from eventlet.green import subprocess  # noqa: H905

OPENSTACK = pathlib.Path(sys.executable).parent / 'openstack'


class CLIError(Exception):
    def __init__(self, argv, result):
        self.argv = argv
        self.result = result
        super().__init__('%s exited %d: %s' % (
            ' '.join(shlex.quote(a) for a in argv), result.returncode,
            result.stderr.strip()[-2000:]))


class OpenStackCLI(object):

    def __init__(self, endpoint, project_id, user='admin', echo=None,
                 identity_url=None):
        self.endpoint = endpoint
        self.identity_url = identity_url
        self.token = '%s:%s' % (user, project_id)
        self.echo = echo          # callable(str) to show each command

    def argv(self, *args, microversion=None):
        argv = [str(OPENSTACK), '--os-auth-type', 'admin_token',
                '--os-endpoint', self.endpoint, '--os-token', self.token,
                # OSC 10.5 insists on identity v3 for some compute commands
                # (flavor create) even when it never calls keystone.
                '--os-identity-api-version', '3']
        if microversion:
            argv += ['--os-compute-api-version', microversion]
        return argv + list(args)

    def run(self, *args, microversion=None, check=True, json_output=False):
        argv = self.argv(*args, microversion=microversion)
        if json_output:
            argv += ['-f', 'json']
        if self.echo:
            shown = ['openstack'] + (
                ['--os-compute-api-version', microversion]
                if microversion else []) + list(args)
            self.echo('$ ' + ' '.join(shlex.quote(a) for a in shown))
        env = dict(os.environ, PYTHONWARNINGS='ignore')
        if self.identity_url:
            env['OS_IDENTITY_ENDPOINT_OVERRIDE'] = self.identity_url
        result = subprocess.run(argv, capture_output=True, text=True,
                                env=env, timeout=300)
        if check and result.returncode:
            raise CLIError(argv, result)
        if json_output and result.returncode == 0:
            return json.loads(result.stdout)
        return result


def help_mentions(command, option):
    """True when ``openstack <command> --help`` lists ``option``."""
    result = subprocess.run([str(OPENSTACK)] + command.split() + ['--help'],
                            capture_output=True, text=True, timeout=120)
    return option in result.stdout
