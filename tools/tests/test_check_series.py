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

"""Tests of tools/check-series' commit message and series rules."""

import importlib.machinery
import importlib.util
import pathlib
import subprocess
import tempfile
import unittest
from unittest import mock

TOOL = pathlib.Path(__file__).resolve().parent.parent / 'check-series'
_loader = importlib.machinery.SourceFileLoader('check_series', str(TOOL))
_spec = importlib.util.spec_from_loader('check_series', _loader)
check_series = importlib.util.module_from_spec(_spec)
_loader.exec_module(check_series)

CHANGE_ID = 'I' + '0123456789' * 4
GOOD = '''libvirt: Copy vPMEM data on cold migration and resize

Why the change is needed, wrapped at 72 characters, and what it does
about it.

Implements: blueprint allow-migrate-pmem-data
Change-Id: %s
''' % CHANGE_ID


class CheckMessageTest(unittest.TestCase):

    def check(self, message, change_ids=None):
        return check_series.check_message(
            message, set() if change_ids is None else change_ids)

    def test_a_message_as_upstream_expects_passes(self):
        change_ids = set()
        self.assertEqual([], self.check(GOOD, change_ids))
        self.assertEqual({CHANGE_ID}, change_ids)

    def test_a_bug_fix_may_name_its_bug_instead(self):
        message = GOOD.replace('Implements: blueprint allow-migrate-pmem-data',
                               'Closes-Bug: (to be filed: what breaks)')
        self.assertEqual([], self.check(message))

    def test_each_rule_is_enforced(self):
        cases = {
            'summary is longer': GOOD.replace('resize', 'resize' + 'x' * 20),
            'no blank line': GOOD.replace('resize\n\n', 'resize\n'),
            'body lines over 72': GOOD.replace('about it.', 'x' * 73),
            'neither': GOOD.replace('Implements: blueprint', 'Implements:'),
            'not a Change-Id': GOOD.replace('Change-Id: I', 'Change-Id: X'),
        }
        for expected, message in cases.items():
            problems = self.check(message)
            self.assertEqual(1, len(problems), (expected, problems))
            self.assertIn(expected, problems[0])

    def test_a_change_id_is_one_patch_s_only(self):
        self.assertIn("is another patch's",
                      self.check(GOOD, {CHANGE_ID})[0])


if __name__ == '__main__':
    unittest.main()


class ForwardReferencesTest(unittest.TestCase):
    """A throwaway repository: upstream, then the patches under test."""

    def setUp(self):
        scratch = tempfile.TemporaryDirectory()
        self.addCleanup(scratch.cleanup)
        self.repo = pathlib.Path(scratch.name)
        self.git('init', '-q', '-b', 'main')
        self.commit('up.py', 'def upstream_helper():\n    pass\n', 'up')
        self.git('branch', 'upstream')
        patcher = mock.patch.object(check_series, 'NOVA', self.repo)
        patcher.start()
        self.addCleanup(patcher.stop)

    def git(self, *argv):
        subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t',
                        *argv], cwd=self.repo, check=True,
                       capture_output=True)

    def commit(self, path, text, subject):
        (self.repo / path).write_text(text)
        self.git('add', path)
        self.git('commit', '-q', '-m', subject)

    def test_a_name_used_before_its_patch_defines_it_is_found(self):
        self.commit('a.py', 'copy_namespaces(record=read_the_record())\n',
                    'uses')
        self.commit('b.py', 'def read_the_record():\n    pass\n',
                    'defines')
        self.assertEqual([(1, 2, 'read_the_record')],
                         check_series.forward_references(
                             check_series.series()))

    def test_a_name_defined_first_or_upstream_is_not(self):
        self.commit('b.py', 'def read_the_record():\n    pass\n',
                    'defines')
        self.commit('a.py', 'read_the_record()\nupstream_helper()\n',
                    'uses')
        self.assertEqual([], check_series.forward_references(
            check_series.series()))
