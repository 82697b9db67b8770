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

    def _read_file(self):
        with open(os.path.join(self.dir, 'vpmem-owners-host1.json'),
                  'rb') as f:
            return jsonutils.load(f)

    def _write_file(self, data):
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, 'vpmem-owners-host1.json'),
                  'w') as f:
            jsonutils.dump(data, f)

    def test_record_is_per_host_and_persistent(self):
        self.owners.set(['ns_0'], uuids.instance)
        self.assertEqual(
            {'owners': {'ns_0': uuids.instance}, 'incoming': {}},
            self._read_file())
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
            write.assert_called_once_with({'ns_0': vpmem_owners.ZEROED}, {})

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

    def test_incoming_is_recorded_and_persistent(self):
        self.owners.set(['ns_0', 'ns_1'], uuids.instance, incoming=True)
        self.owners.set(['ns_2'], uuids.other)
        self.assertEqual(uuids.instance, self.owners.incoming('ns_0'))
        self.assertEqual(uuids.instance, self.owners.get('ns_0'))
        self.assertIsNone(self.owners.incoming('ns_2'))
        self.assertIsNone(self.owners.incoming('ns_3'))
        # The helper reads the file: the incoming namespaces are in it.
        self.assertEqual(
            {'owners': {'ns_0': uuids.instance, 'ns_1': uuids.instance,
                        'ns_2': uuids.other},
             'incoming': {'ns_0': uuids.instance, 'ns_1': uuids.instance}},
            self._read_file())
        restarted = vpmem_owners.NamespaceOwners(self.dir, 'host1')
        self.assertEqual(uuids.instance, restarted.incoming('ns_1'))
        self.assertIsNone(restarted.incoming('ns_2'))

    def test_any_later_change_ends_incoming(self):
        self.owners.set(['ns_0', 'ns_1'], uuids.instance, incoming=True)
        # The same owner, no longer moving here: only for these names.
        self.owners.set(['ns_0'], uuids.instance)
        self.assertIsNone(self.owners.incoming('ns_0'))
        self.assertEqual(uuids.instance, self.owners.incoming('ns_1'))
        self.owners.set(['ns_1'], vpmem_owners.ZEROED)
        self.assertIsNone(self.owners.incoming('ns_1'))
        self.assertEqual({'owners': {'ns_0': uuids.instance,
                                     'ns_1': vpmem_owners.ZEROED},
                          'incoming': {}}, self._read_file())

    def test_incoming_to_another_instance(self):
        self.owners.set(['ns_0'], uuids.instance, incoming=True)
        self.owners.set(['ns_0'], uuids.other, incoming=True)
        self.assertEqual(uuids.other, self.owners.incoming('ns_0'))

    def test_only_incoming_changed_is_rewritten(self):
        self.owners.set(['ns_0'], uuids.instance)
        with mock.patch.object(self.owners, '_write') as write:
            self.owners.set(['ns_0'], uuids.instance, incoming=True)
            write.assert_called_once_with({'ns_0': uuids.instance},
                                          {'ns_0': uuids.instance})
            write.reset_mock()
            self.owners.set(['ns_0'], uuids.instance, incoming=True)
            write.assert_not_called()
            self.owners.set(['ns_0'], uuids.instance)
            write.assert_called_once_with({'ns_0': uuids.instance}, {})

    def test_legacy_record_is_read(self):
        # The first format of the file: whose data each namespace holds,
        # and nothing incoming.
        self._write_file({'ns_0': uuids.instance,
                          'ns_1': vpmem_owners.ZEROED})
        self.assertEqual(uuids.instance, self.owners.get('ns_0'))
        self.assertEqual(vpmem_owners.ZEROED, self.owners.get('ns_1'))
        self.assertIsNone(self.owners.incoming('ns_0'))
        self.assertEqual({'ns_0'}, self.owners.owned_by(uuids.instance))
        # The next change writes the current format, keeping the record.
        self.owners.set(['ns_2'], uuids.other, incoming=True)
        self.assertEqual(
            {'owners': {'ns_0': uuids.instance, 'ns_1': vpmem_owners.ZEROED,
                        'ns_2': uuids.other},
             'incoming': {'ns_2': uuids.other}}, self._read_file())

    def test_legacy_record_of_a_namespace_named_owners(self):
        self._write_file({'owners': uuids.instance, 'incoming': 'zeroed'})
        self.assertEqual(uuids.instance, self.owners.get('owners'))
        self.assertEqual(vpmem_owners.ZEROED, self.owners.get('incoming'))
        self.assertIsNone(self.owners.incoming('owners'))

    def test_a_record_that_is_no_owners_file_is_refused(self):
        # Nothing is taken or zeroed on a record that cannot be read.
        for data in ([], {'owners': ['ns_0']}, {'ns_0': 1},
                     {'owners': {}, 'incoming': {'ns_0': None}}):
            self._write_file(data)
            owners = vpmem_owners.NamespaceOwners(self.dir, 'host1')
            self.assertRaises(ValueError, owners.get, 'ns_0')
            self.assertRaises(ValueError, owners.incoming, 'ns_0')


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
        # The tool gets the namespaces and says by name what it could
        # not zero.
        tool = mock.Mock(return_value=['ns_1'])
        exc = self.assertRaises(exception.VPMEMCleanupFailed,
                                self.owners.zero,
                                [self.vpmems['ns_0'], self.vpmems['ns_1']],
                                tool=tool)
        self.assertIn('ns_1', str(exc))
        tool.assert_called_once_with([self.vpmems['ns_0'],
                                      self.vpmems['ns_1']])
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

    def test_take_for_a_move_here_marks_the_namespaces_incoming(self):
        self.owners.set(['ns_0'], vpmem_owners.ZEROED)
        self.owners.take(uuids.instance,
                         [self.vpmems['ns_0'], self.vpmems['ns_1']],
                         empty=True, incoming=True)
        # ns_1 had no record: zeroed first.
        self.assertEqual(['/dev/dax0.1'], self._zeroed())
        for name in ('ns_0', 'ns_1'):
            self.assertEqual(uuids.instance, self.owners.get(name))
            self.assertEqual(uuids.instance, self.owners.incoming(name))
        self.assertIsNone(self.owners.incoming('ns_2'))

    def test_take_without_incoming_marks_nothing(self):
        self.owners.take(uuids.instance, [self.vpmems['ns_0']])
        self.assertEqual(uuids.instance, self.owners.get('ns_0'))
        self.assertIsNone(self.owners.incoming('ns_0'))

    def test_the_instance_running_here_ends_incoming(self):
        # finish_migration takes the namespaces again for the guest: the
        # copy may no longer write them.
        vpmems = [self.vpmems['ns_0'], self.vpmems['ns_1']]
        self.owners.take(uuids.instance, vpmems, empty=True, incoming=True)
        self.cleanup_vpmem.reset_mock()
        self.owners.take(uuids.instance, vpmems)
        self.assertEqual([], self._zeroed())
        for name in ('ns_0', 'ns_1'):
            self.assertEqual(uuids.instance, self.owners.get(name))
            self.assertIsNone(self.owners.incoming(name))

    def test_zeroing_ends_incoming(self):
        vpmems = [self.vpmems['ns_0'], self.vpmems['ns_1'],
                  self.vpmems['ns_2']]
        self.owners.take(uuids.instance, vpmems, empty=True, incoming=True)
        # With daxio, with a tool, and what a tool could not zero.
        self.owners.zero([self.vpmems['ns_0']])
        self.assertRaises(exception.VPMEMCleanupFailed, self.owners.zero,
                          vpmems[1:], tool=mock.Mock(return_value=['ns_2']))
        self.assertIsNone(self.owners.incoming('ns_0'))
        self.assertIsNone(self.owners.incoming('ns_1'))
        self.assertEqual(uuids.instance, self.owners.incoming('ns_2'))
        self.assertEqual(uuids.instance, self.owners.get('ns_2'))

    def test_release_unheld_tells_the_tool_whose_data_it_zeroes(self):
        # The helper zeroes a namespace only for the instance its host
        # recorded, so the tool gets the recorded owner of each.
        self.owners.set(['ns_0'], uuids.deleted)
        self.owners.set(['ns_1'], uuids.failed_move, incoming=True)
        self.owners.set(['ns_2'], vpmem_owners.ZEROED)
        tool = mock.Mock(return_value=[])
        self.assertEqual(['ns_0', 'ns_1'], self.owners.release_unheld(
            set(), self.owners.generation, self.vpmems, tool=tool))
        self.assertEqual(
            [mock.call([self.vpmems['ns_0']], owner=uuids.deleted),
             mock.call([self.vpmems['ns_1']], owner=uuids.failed_move)],
            tool.call_args_list)
        self.assertEqual([], self._zeroed())
        for name in ('ns_0', 'ns_1'):
            self.assertEqual(vpmem_owners.ZEROED, self.owners.get(name))
            self.assertIsNone(self.owners.incoming(name))

    def test_release_unheld_tool_failure_leaves_the_owner(self):
        self.owners.set(['ns_0'], uuids.deleted)
        tool = mock.Mock(return_value=['ns_0'])
        self.assertEqual([], self.owners.release_unheld(
            set(), self.owners.generation, self.vpmems, tool=tool))
        tool.assert_called_once_with([self.vpmems['ns_0']],
                                     owner=uuids.deleted)
        self.assertEqual(uuids.deleted, self.owners.get('ns_0'))

    def test_release_unheld_tries_again_after_a_failure(self):
        self.owners.set(['ns_0', 'ns_1'], uuids.deleted)
        self.cleanup_vpmem.side_effect = [test.TestingException, None]
        self.assertEqual(['ns_1'], self.owners.release_unheld(
            set(), self.owners.generation, self.vpmems))
        self.assertEqual(uuids.deleted, self.owners.get('ns_0'))
        self.cleanup_vpmem.side_effect = None
        self.assertEqual(['ns_0'], self.owners.release_unheld(
            set(), self.owners.generation, self.vpmems))
