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

"""The cloud's own virtualenv: patched Nova plus the other services.

It is separate from ``.venv`` on purpose: Keystone, Glance and Neutron pull
in packages (neutron-lib registers flake8 checks, for one) that would change
what the unit tests and flake8 of ``.venv`` run with. The patched trees of
``.workspace`` are installed editable, so the cloud runs exactly the code
the other test groups test. It runs on the distribution's Python, as
packaged services do: nova-compute runs as the nova user, which may not
reach an interpreter in root's home (pyenv's, for one).
"""

import hashlib
import json
import os
import pathlib
import subprocess

from e2e.stack import base

REQUIREMENTS = base.ROOT / 'e2e' / 'stack' / 'requirements.txt'
PROJECTS = ('nova', 'openstacksdk', 'python-openstackclient')
PYTHON = pathlib.Path('/usr/bin/python3')


def install(venv_bin, args, inputs, what, log_name):
    """Install args into the venv of venv_bin unless it is up to date.

    The venv is up to date when the pip arguments and the files in
    ``inputs`` (requirement files, package metadata) are what its stamp
    recorded.
    """
    venv = venv_bin.parent
    stamp = hashlib.sha256(' '.join([str(PYTHON)] + args).encode())
    for path in inputs:
        stamp.update(path.read_bytes())
    stamp_file = venv / 'stack-stamp'
    if stamp_file.exists() and stamp_file.read_text() == stamp.hexdigest():
        return
    if not _runs_on(venv, PYTHON):
        subprocess.run([str(PYTHON), '-m', 'venv', '--clear', str(venv)],
                       check=True)
    log_path = base.LOGS / log_name
    base.say('installing %s into %s (a few minutes the first time; log %s)'
             % (what, venv, log_path))
    base.LOGS.mkdir(parents=True, exist_ok=True)
    # Keep pbr from rewriting the workspace trees' AUTHORS and ChangeLog.
    env = dict(os.environ, SKIP_GENERATE_AUTHORS='1',
               SKIP_WRITE_GIT_CHANGELOG='1')
    with open(log_path, 'w') as log:
        subprocess.run([str(venv_bin / 'python'), '-m', 'pip', 'install',
                        '-q', *args], check=True, env=env, stdout=log,
                       stderr=subprocess.STDOUT)
    stamp_file.write_text(stamp.hexdigest())


def _runs_on(venv, python):
    """Tell whether venv exists and was made with interpreter python."""
    try:
        config = (venv / 'pyvenv.cfg').read_text()
    except FileNotFoundError:
        return False
    home = dict(line.split(' = ', 1) for line in config.splitlines()
                if ' = ' in line).get('home')
    return home == str(python.resolve().parent)


def ensure():
    """Create or update the services' venv (patched workspace trees)."""
    trees = [base.ROOT / '.workspace' / project for project in PROJECTS]
    args = []
    for tree in trees:
        args += ['-e', str(tree)]
    args += ['-r', str(base.ROOT / 'requirements.txt'), '-r',
             str(REQUIREMENTS)]
    # The package metadata, entry points included: a new console script
    # needs a new install even into an editable tree.
    metadata = [tree / name for tree in trees
                for name in ('setup.cfg', 'pyproject.toml')
                if (tree / name).exists()]
    install(base.VENV_BIN, args,
            [base.ROOT / 'requirements.txt', REQUIREMENTS] + metadata,
            'the services', 'pip-install.log')


def pristine_nova_sdist():
    """The pinned Nova 34.0.0 sdist, as tools/workspace downloaded it."""
    pin = json.loads((base.ROOT / 'upstream.json').read_text())['nova']
    sdist = base.ROOT / '.workspace' / '.cache' / pin['url'].rsplit('/', 1)[1]
    if hashlib.sha256(sdist.read_bytes()).hexdigest() != pin['sha256']:
        raise RuntimeError('%s does not match the sha256 pinned in '
                           'upstream.json; run tools/workspace build' % sdist)
    return sdist


def ensure_old():
    """A venv with UNPATCHED Nova 34.0.0, for the rolling-upgrade tests.

    Built from the same pinned sdist the workspace patches, with none of
    our work: a compute of the release before the copy feature. It takes
    the libvirt binding pin from the services' requirements.
    """
    sdist = pristine_nova_sdist()
    libvirt = [line for line in REQUIREMENTS.read_text().splitlines()
               if line.startswith('libvirt-python')]
    args = [str(sdist), '-r', str(base.ROOT / 'requirements.txt'), *libvirt]
    install(base.OLD_VENV_BIN, args, [base.ROOT / 'requirements.txt'],
             'unpatched nova from %s' % sdist.name, 'pip-install-old.log')
