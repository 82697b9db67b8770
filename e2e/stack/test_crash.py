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

"""nova-compute killed mid-move on the real cloud (e2e/stack/crash.py).

Needs the cloud up (``tools/run-cloud-tests`` brings it up and down). The
steps build on each other, as the tour's do.
"""

from e2e.stack import crash
from e2e.stack import test_cloud


class CrashTestCase(test_cloud.StepsTestCase):

    steps_factory = crash.CrashTour

    def test_1_boot(self):
        self._run('boot')

    def test_2_kill_source_during_copy(self):
        self._run('kill_source_during_copy')

    def test_3_kill_source_during_precopy(self):
        self._run('kill_source_during_precopy')

    def test_4_kill_destination_during_copy(self):
        self._run('kill_destination_during_copy')

    def test_5_delete(self):
        self._run('delete')
