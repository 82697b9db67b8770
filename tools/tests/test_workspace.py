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

"""Tests of tools/workspace on a tiny synthetic upstream project.

Each test builds a throw-away repository (pins and a patch series) around a
small sdist made on the fly, so they need git but no network.
"""

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import io
import json
import pathlib
import subprocess
import tarfile
import tempfile
import unittest

TOOL = pathlib.Path(__file__).resolve().parent.parent / 'workspace'
_loader = importlib.machinery.SourceFileLoader('workspace_tool', str(TOOL))
_spec = importlib.util.spec_from_loader('workspace_tool', _loader)
workspace = importlib.util.module_from_spec(_spec)
_loader.exec_module(workspace)

UPSTREAM = {
    'demo/__init__.py': 'VERSION = "1.0"\n',
    'demo/core.py': 'def answer():\n    return 41\n',
    'README.rst': 'Demo project\n',
}


def git(cwd, *args):
    return subprocess.run(
        ['git', '-c', 'user.name=Dev', '-c', 'user.email=dev@example.org',
         *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


class WorkspaceToolTest(unittest.TestCase):

    def setUp(self):
        self.tmp = pathlib.Path(self.enterContext(
            tempfile.TemporaryDirectory()))
        self.sdist = self.tmp / 'demo-1.0.tar.gz'
        with tarfile.open(self.sdist, 'w:gz') as tar:
            for name, text in UPSTREAM.items():
                data = text.encode()
                info = tarfile.TarInfo('demo-1.0/' + name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        self.root = self.tmp / 'repo'
        (self.root / 'patches' / 'demo').mkdir(parents=True)
        self.write_pins(hashlib.sha256(self.sdist.read_bytes()).hexdigest())
        self.tree = self.root / '.workspace' / 'demo'

    def write_pins(self, sha256, url=None):
        pins = {'demo': {'version': '1.0',
                         'url': url or self.sdist.as_uri(),
                         'sha256': sha256}}
        (self.root / 'upstream.json').write_text(json.dumps(pins))

    def build(self, discard=False):
        with contextlib.redirect_stdout(io.StringIO()) as out:
            workspace.cmd_build(self.root, discard=discard, venv=False)
        return out.getvalue()

    def export(self):
        with contextlib.redirect_stdout(io.StringIO()):
            workspace.cmd_export(self.root)

    def check(self):
        with contextlib.redirect_stdout(io.StringIO()) as out:
            code = workspace.cmd_check(self.root)
        return code, out.getvalue()

    def repo_files(self):
        return {str(p.relative_to(self.root)): p.read_bytes()
                for p in self.root.rglob('*')
                if p.is_file() and '.workspace' not in p.parts}

    def commit_change(self):
        """One workspace commit: an upstream edit plus a new file."""
        (self.tree / 'demo' / 'core.py').write_text(
            'def answer():\n    return 42\n')
        (self.tree / 'demo' / 'extra.py').write_text('EXTRA = True\n')
        git(self.tree, 'add', '-A')
        git(self.tree, 'commit', '-q', '-m',
            'Fix the answer\n\nIt was off by one.')

    def commit_follow_up(self):
        """A second commit that changes the new file of the first."""
        (self.tree / 'demo' / 'extra.py').write_text('EXTRA = False\n')
        git(self.tree, 'commit', '-qam', 'Turn the extra off')

    def patch_dir(self):
        return self.root / 'patches' / 'demo'

    def test_build_lays_out_pristine_then_patches(self):
        self.build()
        log = git(self.tree, 'log', '--format=%s').splitlines()
        self.assertEqual(['Import demo 1.0 sdist'], log)
        self.assertEqual('def answer():\n    return 41\n',
                         (self.tree / 'demo' / 'core.py').read_text())

    def test_export_writes_each_commit_whole(self):
        self.build()
        self.commit_change()
        self.export()

        self.assertEqual(['0001-Fix-the-answer.patch'],
                         sorted(p.name for p in self.patch_dir().iterdir()))
        patch = (self.patch_dir() / '0001-Fix-the-answer.patch').read_text()
        self.assertIn('+    return 42', patch)
        self.assertIn('new file mode 100644', patch)
        self.assertIn('+EXTRA = True', patch)
        # No copy of the project's files beside the series.
        self.assertEqual(['patches/demo/0001-Fix-the-answer.patch',
                          'upstream.json'], sorted(self.repo_files()))

    def test_each_patch_carries_its_own_version_of_a_new_file(self):
        self.build()
        self.commit_change()
        self.commit_follow_up()
        self.export()
        follow_up = (self.patch_dir() /
                     '0002-Turn-the-extra-off.patch').read_text()
        self.assertIn('-EXTRA = True\n+EXTRA = False', follow_up)

        self.build(discard=True)    # a fresh build from the repository

        self.assertEqual(['Turn the extra off', 'Fix the answer'], git(
            self.tree, 'log', '--format=%s', 'upstream..').splitlines())
        self.assertEqual('EXTRA = True\n', git(
            self.tree, 'show', 'HEAD~1:demo/extra.py'))
        self.assertEqual('EXTRA = False\n', git(
            self.tree, 'show', 'HEAD:demo/extra.py'))

    def test_export_drops_the_patch_of_a_dropped_commit(self):
        self.build()
        self.commit_change()
        self.commit_follow_up()
        self.export()
        git(self.tree, 'reset', '-q', '--hard', 'HEAD~1')

        self.export()

        self.assertEqual(['0001-Fix-the-answer.patch'],
                         sorted(p.name for p in self.patch_dir().iterdir()))

    def test_round_trip_changes_nothing(self):
        self.build()
        self.commit_change()
        self.export()
        before = self.repo_files()

        self.build(discard=True)    # a fresh build from the repository
        self.assertEqual('def answer():\n    return 42\n',
                         (self.tree / 'demo' / 'core.py').read_text())
        self.assertTrue((self.tree / 'demo' / 'extra.py').exists())
        self.export()

        self.assertEqual(before, self.repo_files())
        self.assertEqual(0, self.check()[0])

    def test_second_build_is_a_no_op(self):
        self.build()
        head = git(self.tree, 'rev-parse', 'HEAD')
        self.assertIn('demo: up to date', self.build())
        self.assertEqual(head, git(self.tree, 'rev-parse', 'HEAD'))

    def test_check_reports_unexported_commit(self):
        self.build()
        self.assertEqual(0, self.check()[0])
        self.commit_change()

        code, out = self.check()
        self.assertEqual(1, code)
        self.assertIn('patches/demo/0001-Fix-the-answer.patch is in the '
                      'workspace but not exported', out)
        self.export()
        self.assertEqual(0, self.check()[0])

    def test_check_reports_uncommitted_change(self):
        self.build()
        (self.tree / 'README.rst').write_text('edited\n')
        code, out = self.check()
        self.assertEqual(1, code)
        self.assertIn('uncommitted', out)
        self.assertIn('README.rst', out)

    def edit_patch_message(self):
        """The repository moves on: its patch's message changes."""
        patch = self.patch_dir() / '0001-Fix-the-answer.patch'
        patch.write_text(patch.read_text().replace(
            'It was off by one.', 'It was off by one, says the test.'))

    def test_check_reports_repo_changed_since_build(self):
        self.build()
        self.commit_change()
        self.export()
        self.edit_patch_message()
        code, out = self.check()
        self.assertEqual(1, code)
        self.assertIn('patches/demo/0001-Fix-the-answer.patch differs '
                      'between the repo and the workspace', out)

    def test_build_refuses_to_overwrite_unexported_work(self):
        self.build()
        self.commit_change()
        self.export()
        (self.tree / 'README.rst').write_text('precious\n')
        # The repository moves on, so a build must rebuild, which would
        # lose the uncommitted edit.
        self.edit_patch_message()
        with self.assertRaisesRegex(workspace.WorkspaceError,
                                    'not exported.*--discard'):
            self.build()
        self.assertEqual('precious\n',
                         (self.tree / 'README.rst').read_text())

        self.build(discard=True)
        self.assertEqual('Demo project\n',
                         (self.tree / 'README.rst').read_text())

    def test_hash_mismatch_is_a_hard_error(self):
        self.write_pins('0' * 64)
        with self.assertRaisesRegex(workspace.WorkspaceError,
                                    'sha256 mismatch'):
            self.build()
        self.assertFalse(self.tree.exists())

    def test_download_failure_is_reported(self):
        self.write_pins('0' * 64, url=(self.tmp / 'missing.tar.gz').as_uri())
        with self.assertRaisesRegex(workspace.WorkspaceError,
                                    'cannot download .*missing.tar.gz'):
            self.build()

    def test_patch_that_does_not_apply_names_patch_and_file(self):
        self.build()
        self.commit_change()
        self.export()
        patch = self.root / 'patches' / 'demo' / '0001-Fix-the-answer.patch'
        text = patch.read_text()
        self.assertIn('-    return 41', text)
        patch.write_text(text.replace('-    return 41', '-    return 40'))

        with self.assertRaises(workspace.WorkspaceError) as ctx:
            self.build(discard=True)
        message = str(ctx.exception)
        self.assertIn('patches/demo/0001-Fix-the-answer.patch does not '
                      'apply', message)
        self.assertIn('demo/core.py', message)


# Stands in for "python -m build" in the dist tests: it writes what the
# build would see (its version, file dates and the tree) into --outdir.
FAKE_BUILD = """#!/bin/sh
out=$7 tree=$8
printf '%s %s' "$PBR_VERSION" "$SOURCE_DATE_EPOCH" >"$out/seen"
cp "$tree/demo/core.py" "$out/core.py"
"""


class DistTest(unittest.TestCase):
    """tools/workspace dist, with a stand-in for the pinned build tools."""

    setUp = WorkspaceToolTest.setUp
    write_pins = WorkspaceToolTest.write_pins
    build = WorkspaceToolTest.build
    export = WorkspaceToolTest.export
    commit_change = WorkspaceToolTest.commit_change
    patch_dir = WorkspaceToolTest.patch_dir
    edit_patch_message = WorkspaceToolTest.edit_patch_message

    def released(self):
        """A repository whose series has one patch; the project in it."""
        self.build()
        self.commit_change()
        self.export()
        return workspace.load_projects(self.root)[0]

    def test_version_names_the_series(self):
        self.assertEqual('1.0+vpmem.1',
                         workspace.dist_version(self.released()))

    def test_builds_from_the_repository_not_the_workspace(self):
        project = self.released()
        # Work in the workspace that was never exported does not count.
        (self.tree / 'demo' / 'core.py').write_text('UNEXPORTED = 1\n')
        git(self.tree, 'commit', '-qam', 'Not exported')
        fake = self.tmp / 'fake-python'
        fake.write_text(FAKE_BUILD)
        fake.chmod(0o755)
        out = self.tmp / 'out'
        out.mkdir()

        workspace.build_dist(project, fake, self.tmp / 'fresh', out)

        self.assertEqual('1.0+vpmem.1 %s' % workspace.SOURCE_DATE_EPOCH,
                         (out / 'seen').read_text())
        self.assertEqual('def answer():\n    return 42\n',
                         (out / 'core.py').read_text())

    def test_any_input_changes_the_build_info(self):
        project = self.released()
        (self.root / 'tools').mkdir()
        (self.root / workspace.DIST_REQUIREMENTS).write_text('build\n')
        before = workspace.dist_info(self.root, [project])
        self.edit_patch_message()
        self.assertNotEqual(before, workspace.dist_info(self.root, [project]))

    def test_artifacts_that_differ_from_their_checksums_are_rebuilt(self):
        out = self.tmp / 'dist'
        out.mkdir()
        (out / 'demo-1.0.whl').write_bytes(b'wheel')
        (out / 'SHA256SUMS').write_text('%s  demo-1.0.whl\n' % (
            hashlib.sha256(b'wheel').hexdigest()))
        self.assertTrue(workspace._artifacts_intact(out))
        (out / 'demo-1.0.whl').write_bytes(b'other')
        self.assertFalse(workspace._artifacts_intact(out))


if __name__ == '__main__':
    unittest.main()
