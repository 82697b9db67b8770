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

from nova import test
from nova.virt.libvirt import vpmem_owners


class NamespaceOwnersTestCase(test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.dir = os.path.join(self.useFixture(fixtures.TempDir()).path,
                                'instances')
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
