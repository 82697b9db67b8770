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

"""The rolling upgrade on the real cloud, one test per step.

Runs before ``test_cloud`` in the same bring-up (``tools/run-cloud-tests``
starts the cloud with the unpatched compute when this module is selected).
"""

from e2e.stack import test_cloud
from e2e.stack import upgrade


class RollingUpgradeTestCase(test_cloud.StepsTestCase):

    steps_factory = upgrade.RollingUpgrade

    def test_1_old_compute_present(self):
        self._run('old_compute_present')

    def test_2_copy_refused(self):
        self._run('copy_refused')

    def test_3_copy_to_old_host_never_starts(self):
        self._run('copy_to_old_host_never_starts')

    def test_4_moves_without_copy(self):
        self._run('moves_without_copy')

    def test_5_old_compute_retired(self):
        self._run('old_compute_retired')
