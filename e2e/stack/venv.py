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
what the unit tests and flake8 of ``.venv`` run with. Nova and the clients
come from the versioned wheels ``tools/workspace dist`` builds from the
repository's patch series (``.workspace/dist``), the artifacts an operator
installs; the other test groups test the same series in ``.workspace``'s
trees. It runs on the distribution's Python, as
packaged services do: nova-compute runs as the nova user, which may not
reach an interpreter in root's home (pyenv's, for one).
"""

import hashlib
import json
import pathlib
import subprocess

from e2e.stack import base

REQUIREMENTS = base.ROOT / 'e2e' / 'stack' / 'requirements.txt'
PYTHON = pathlib.Path('/usr/bin/python3')
DIST = base.ROOT / '.workspace' / 'dist'


def install(venv_bin, args, inputs, what, log_name, reinstall=()):
    """Install args into the venv of venv_bin unless it is up to date.

    The venv is up to date when the pip arguments and the files in
    ``inputs`` (requirement files, package metadata, checksums) are what its
    stamp recorded. ``reinstall`` (some of args) is installed again even at
    the same version: a rebuilt artifact may keep its version.
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
    pip = [str(venv_bin / 'python'), '-m', 'pip', 'install', '-q']
    with open(log_path, 'w') as log:
        subprocess.run(pip + args, check=True, stdout=log,
                       stderr=subprocess.STDOUT)
        if reinstall:
            subprocess.run(pip + ['--no-deps', '--force-reinstall',
                                  *reinstall], check=True, stdout=log,
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
    """Create or update the services' venv from the patched artifacts.

    The wheels ``tools/workspace dist`` built, as an operator installs
    them: every cloud test also proves the packages (their entry points and
    data files).
    """
    sums = DIST / 'SHA256SUMS'
    # As the deployment guide says: the artifacts match their checksums.
    base.run('sha256sum', '--check', '--quiet', sums.name, cwd=DIST)
    wheels = sorted(str(DIST / line.split()[1])
                    for line in sums.read_text().splitlines()
                    if line.endswith('.whl'))
    args = wheels + ['-r', str(base.ROOT / 'requirements.txt'), '-r',
                     str(REQUIREMENTS)]
    install(base.VENV_BIN, args,
            [base.ROOT / 'requirements.txt', REQUIREMENTS, sums],
            'the services and the patched wheels of %s' % DIST,
            'pip-install.log', reinstall=wheels)


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
