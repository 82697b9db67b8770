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

import os
from unittest import mock

import fixtures
from oslo_serialization import jsonutils
from oslo_utils.fixture import uuidsentinel as uuids

from nova import exception
from nova import objects
from nova import test
from nova.virt.libvirt import vpmem_owners


class NamespaceOwnersTestCase(test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.dir = os.path.join(self.useFixture(fixtures.TempDir()).path,
                                'state')
        self.owners = vpmem_owners.NamespaceOwners(self.dir, 'host1')

    def test_unknown_without_a_record(self):
        self.assertIsNone(self.owners.get('ns_0'))
        self.assertFalse(os.path.exists(self.dir))

    def test_set_and_get(self):
        self.owners.set(['ns_0', 'ns_1'], uuids.instance)
        self.owners.set(['ns_1'], vpmem_owners.ZEROED)
        self.assertEqual(uuids.instance, self.owners.get('ns_0'))
        self.assertEqual(vpmem_owners.ZEROED, self.owners.get('ns_1'))
        self.assertIsNone(self.owners.get('ns_2'))

    def test_record_is_per_host_and_persistent(self):
        self.owners.set(['ns_0'], uuids.instance)
        self.assertEqual(
            {'ns_0': uuids.instance},
            jsonutils.load(open(os.path.join(self.dir,
                                        'vpmem-owners-host1.json'), 'rb')))
        self.assertEqual(uuids.instance, vpmem_owners.NamespaceOwners(
            self.dir, 'host1').get('ns_0'))
        self.assertIsNone(vpmem_owners.NamespaceOwners(
            self.dir, 'host2').get('ns_0'))
        self.assertEqual(['vpmem-owners-host1.json'], os.listdir(self.dir))

    def test_owned_by(self):
        self.owners.set(['ns_0', 'ns_2'], uuids.instance)
        self.owners.set(['ns_1'], uuids.other)
        self.assertEqual({'ns_0', 'ns_2'},
                         self.owners.owned_by(uuids.instance))
        self.assertEqual(set(), self.owners.owned_by(uuids.nobody))

    def test_unchanged_record_is_not_rewritten(self):
        self.owners.set(['ns_0'], uuids.instance)
        with mock.patch.object(self.owners, '_write') as write:
            self.owners.set(['ns_0'], uuids.instance)
            write.assert_not_called()
            self.owners.set(['ns_0'], vpmem_owners.ZEROED)
            write.assert_called_once_with({'ns_0': vpmem_owners.ZEROED})

    def test_failed_write_keeps_the_old_record(self):
        self.owners.set(['ns_0'], uuids.instance)
        with mock.patch('os.replace', side_effect=OSError('disk full')):
            self.assertRaises(OSError, self.owners.set, ['ns_0'],
                              vpmem_owners.ZEROED)
        # Neither in memory nor on disk did the namespace become zeroed,
        # and no temporary file is left behind.
        self.assertEqual(uuids.instance, self.owners.get('ns_0'))
        self.assertEqual(uuids.instance, vpmem_owners.NamespaceOwners(
            self.dir, 'host1').get('ns_0'))
        self.assertEqual(['vpmem-owners-host1.json'], os.listdir(self.dir))


class NamespaceLifecycleTestCase(test.NoDBTestCase):
    """The decisions of the owner, asserted on what is zeroed."""

    def setUp(self):
        super().setUp()
        self.owners = vpmem_owners.NamespaceOwners(
            self.useFixture(fixtures.TempDir()).path, 'host1')
        self.cleanup_vpmem = self.useFixture(fixtures.MockPatch(
            'nova.privsep.libvirt.cleanup_vpmem')).mock
        self.vpmems = {
            'ns_%d' % i: objects.LibvirtVPMEMDevice(
                name='ns_%d' % i, devpath='/dev/dax0.%d' % i)
            for i in range(4)}

    def _zeroed(self):
        return sorted(c.args[0] for c in self.cleanup_vpmem.call_args_list)

    def test_zero_with_another_tool_updates_the_record(self):
        # Whichever tool zeroes, the record says what it zeroed.
        self.owners.set(['ns_0', 'ns_1'], uuids.instance)
        tool = mock.Mock(return_value=['/dev/dax0.1'])
        self.assertRaises(exception.VPMEMCleanupFailed, self.owners.zero,
                          [self.vpmems['ns_0'], self.vpmems['ns_1']],
                          tool=tool)
        tool.assert_called_once_with(['/dev/dax0.0', '/dev/dax0.1'])
        self.assertEqual([], self._zeroed())
        self.assertEqual(vpmem_owners.ZEROED, self.owners.get('ns_0'))
        self.assertEqual(uuids.instance, self.owners.get('ns_1'))

    def test_a_kept_instance_gives_nothing_up(self):
        held = [self.vpmems['ns_0']]
        with self.owners.kept(uuids.instance):
            self.assertEqual([], self.owners.to_release(
                uuids.instance, True, held, self.vpmems))
        self.assertEqual(held, self.owners.to_release(
            uuids.instance, True, held, self.vpmems))

    def test_zero_falls_back_to_daxio_when_the_tool_cannot_run(self):
        tool = mock.Mock(side_effect=test.TestingException)
        self.owners.zero([self.vpmems['ns_0']], tool=tool)
        self.assertEqual(['/dev/dax0.0'], self._zeroed())
        self.assertEqual(vpmem_owners.ZEROED, self.owners.get('ns_0'))

    def test_release_unheld_zeroes_what_nobody_holds(self):
        self.owners.set(['ns_0'], uuids.deleted)
        self.owners.set(['ns_1'], uuids.on_this_host)
        self.owners.set(['ns_2'], vpmem_owners.ZEROED)
        since = self.owners.generation
        released = self.owners.release_unheld(
            {uuids.on_this_host}, since, self.vpmems)
        self.assertEqual(['ns_0'], released)
        self.assertEqual(['/dev/dax0.0'], self._zeroed())
        self.assertEqual(vpmem_owners.ZEROED, self.owners.get('ns_0'))
        self.assertEqual(uuids.on_this_host, self.owners.get('ns_1'))
        # ns_3 has no record: it is zeroed before its first use instead.
        self.assertIsNone(self.owners.get('ns_3'))

    def test_release_unheld_leaves_what_was_taken_meanwhile(self):
        # The holders were listed before an incoming move took ns_0.
        since = self.owners.generation
        self.owners.take(uuids.incoming, [self.vpmems['ns_0']])
        self.cleanup_vpmem.reset_mock()
        self.assertEqual([], self.owners.release_unheld(
            set(), since, self.vpmems))
        self.assertEqual([], self._zeroed())
        self.assertEqual(uuids.incoming, self.owners.get('ns_0'))
        # One interval later the incoming move is gone: zeroed.
        self.assertEqual(['ns_0'], self.owners.release_unheld(
            set(), self.owners.generation, self.vpmems))

    def test_release_unheld_tries_again_after_a_failure(self):
        self.owners.set(['ns_0', 'ns_1'], uuids.deleted)
        self.cleanup_vpmem.side_effect = [test.TestingException, None]
        self.assertEqual(['ns_1'], self.owners.release_unheld(
            set(), self.owners.generation, self.vpmems))
        self.assertEqual(uuids.deleted, self.owners.get('ns_0'))
        self.cleanup_vpmem.side_effect = None
        self.assertEqual(['ns_0'], self.owners.release_unheld(
            set(), self.owners.generation, self.vpmems))
