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

"""Tests of the benchmark's A/B mode (tools/bench_vpmem_copy.py --ab).

The timing itself is not tested (speed is what the benchmark reports, not
what a test asserts); what is tested is that a revision's checkout holds
that revision's engine and helper, and how rounds are paired.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import unittest

TOOLS = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOOLS))
import bench_vpmem_copy as bench  # noqa: E402

REPO = TOOLS.parent
ENGINE = 'nova/virt/libvirt/vpmem_copy.py'
HELPER = 'nova/cmd/vpmem_copy.py'


def _git(*args):
    return subprocess.run(['git', '-C', str(REPO), *args], check=True,
                          capture_output=True).stdout


class TestPaired(unittest.TestCase):

    def test_ratios_pair_runs_of_the_same_round(self):
        samples = {'b': [{'mb_s': 200}, {'mb_s': 90}, {'mb_s': 330}],
                   'a': [{'mb_s': 100}, {'mb_s': 100}, {'mb_s': 300}]}
        # Sorted per variant, the medians would say 2.0; round by round
        # the ratios are 2.0, 0.9 and 1.1.
        self.assertEqual((1.1, 0.9, 2.0), tuple(
            round(r, 6) for r in bench.paired(samples, 'b', 'a')))


@unittest.skipUnless((REPO / '.git').exists(), 'needs a git clone')
class TestCheckout(unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.base = tempfile.mkdtemp(prefix='test-bench-')
        self.addCleanup(shutil.rmtree, self.base)

    def test_workspace_is_the_current_tree(self):
        self.assertEqual(bench.ROOT, bench.checkout('workspace', self.base))

    def test_revision_holds_its_own_engine_and_helper(self):
        # The last revision that kept the engine at its in-tree path (the
        # series has carried it since), so that a revision other than HEAD
        # is built, by its own tool, and compared with its own files.
        rev = _git('log', '-1', '--diff-filter=AM', '--format=%h', '--',
                   ENGINE).decode().strip()
        tree = pathlib.Path(bench.checkout(rev, self.base))
        self.assertTrue(str(tree).startswith(self.base))
        for path in (ENGINE, HELPER):
            self.assertEqual(_git('show', '%s:%s' % (rev, path)),
                             (tree / path).read_bytes(), path)
        # Patched upstream files too: the series of that revision applied.
        self.assertIn('VPMEMCopyFailed',
                      (tree / 'nova' / 'exception.py').read_text())
        self.assertTrue(os.path.isdir(tree / '.git'))


@unittest.skipUnless(os.geteuid() == 0 and shutil.which('sshd'),
                     'the loopback sshd needs root and OpenSSH')
class TestSshd(unittest.TestCase):

    def test_sessions_skip_the_login_shell_rc_file(self):
        # bash started by sshd reads ~/.bashrc only at shell level 1, so a
        # session's shell must start at level 2: whatever root's rc file
        # runs is then not counted in every login of a copy.
        workdir = tempfile.mkdtemp(prefix='test-bench-')
        self.addCleanup(shutil.rmtree, workdir)
        sshd = bench.Sshd(workdir)
        self.addCleanup(sshd.stop)
        out = subprocess.run(
            ['ssh', '-T', '-o', 'BatchMode=yes'] + sshd.ssh_args +
            ['--', bench.HOST, 'echo "$SHLVL"'],
            check=True, capture_output=True, text=True).stdout
        self.assertEqual('2', out.strip())
