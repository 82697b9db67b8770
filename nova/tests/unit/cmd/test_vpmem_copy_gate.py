# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

from unittest import mock

import fixtures
from oslo_utils.fixture import uuidsentinel as uuids

from nova.cmd import vpmem_copy_gate as gate
from nova import test
from nova.virt import vpmem_stream as wire


class SSHGateTestCase(test.NoDBTestCase):
    """What the copy's restricted ssh key may run on the other host."""

    RUNNER = ['sudo', '-n', '/usr/bin/nova-vpmem-copy']

    def _gate(self, command):
        return gate.gate_argv(command, self.RUNNER)

    def test_receive_zero_and_check_run_with_the_gates_runner(self):
        instance = ['--instance', uuids.instance]
        for args in (instance + ['receive', '--namespace', 'ns1', '--offset',
                                 '0', '--length', '4096', '--source-offset',
                                 '0'],
                     instance + ['receive', '--namespace', 'ns1', '--length',
                                 '1', '--precopy'],
                     instance + ['zero', '--namespace', 'ns1'],
                     instance + ['check', '--namespace', 'ns1', '--length',
                                 '1'],
                     ['--instance=%s' % uuids.instance, 'zero', '--namespace',
                      'ns1'],
                     ['--config-file', '/etc/nova/nova-cpu.conf'] +
                     instance + ['zero', '--namespace', 'ns1'],
                     # The helper itself refuses a call without one.
                     ['zero', '--namespace', 'ns1']):
            # The client's own root helper and helper path are replaced;
            # the instance the call acts for is passed on.
            command = 'sudo -n /tmp/evil/nova-vpmem-copy ' + ' '.join(args)
            self.assertEqual(self.RUNNER + args, self._gate(command))

    def test_everything_else_is_refused(self):
        instance = '--instance %s ' % uuids.instance
        for command in (None, '', 'bash -i', 'cat /dev/dax1.0',
                        'nova-vpmem-copy %ssend --namespace ns0 --length 1'
                        % instance,
                        'nova-vpmem-copy send --live --namespace ns0 '
                        '--length 1',
                        # The sources of a copy, which a guest may map.
                        'nova-vpmem-copy %scheck --sources --namespace ns0 '
                        '--length 1' % instance,
                        'nova-vpmem-copy check --namespace ns1 --length 1 '
                        '--sources',
                        'nova-vpmem-copy-gate sudo -n bash'):
            exc = self.assertRaises(wire.HelperError, self._gate, command)
            self.assertEqual(wire.EXIT_DENIED, exc.code, command)
            self.assertIn('this key only runs nova-vpmem-copy '
                          'receive/zero/check', str(exc))

    def test_arguments_are_checked_before_anything_runs(self):
        for command in ('nova-vpmem-copy zero --namespace ns1; reboot',
                        'nova-vpmem-copy receive --namespace ns1',
                        'nova-vpmem-copy zero --namespace ns1 --live',
                        'nova-vpmem-copy zero --device /dev/dax1.0',
                        'nova-vpmem-copy --instance %s check --allow-in-use '
                        '--namespace ns0 --length 1' % uuids.instance,
                        'nova-vpmem-copy --instance',
                        # The gate is no subcommand of the root helper.
                        'nova-vpmem-copy --instance %s ssh-gate sudo -n bash'
                        % uuids.instance):
            exc = self.assertRaises(wire.HelperError, self._gate, command)
            self.assertEqual(wire.EXIT_USAGE, exc.code, command)

    @mock.patch('os.execvp')
    def test_main_runs_the_request_in_place_of_the_gate(self, mock_exec):
        self.useFixture(fixtures.EnvironmentVariable(
            'SSH_ORIGINAL_COMMAND',
            'x --instance %s zero --namespace ns1' % uuids.instance))
        # The gate itself acts for no instance.
        gate.main(self.RUNNER)
        mock_exec.assert_called_once_with(
            'sudo', self.RUNNER + ['--instance', uuids.instance, 'zero',
                                   '--namespace', 'ns1'])

    @mock.patch('os.execvp')
    def test_main_refuses_without_running_anything(self, mock_exec):
        self.useFixture(fixtures.EnvironmentVariable(
            'SSH_ORIGINAL_COMMAND', 'bash'))
        self.assertEqual(wire.EXIT_DENIED,
                         gate.main(self.RUNNER))
        self.assertEqual(wire.EXIT_USAGE, gate.main([]))
        mock_exec.assert_not_called()
