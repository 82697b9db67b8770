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
the other test groups test.
"""

import hashlib
import json
import os
import subprocess
import sys

from e2e.stack import base

REQUIREMENTS = base.ROOT / 'e2e' / 'stack' / 'requirements.txt'
PROJECTS = ('nova', 'openstacksdk', 'python-openstackclient')


def _pip_args():
    args = []
    for project in PROJECTS:
        args += ['-e', str(base.ROOT / '.workspace' / project)]
    return args + ['-r', str(base.ROOT / 'requirements.txt'),
                   '-r', str(REQUIREMENTS)]


def ensure():
    """Create or update the venv; do nothing when it is up to date."""
    venv = base.VENV_BIN.parent
    stamp = hashlib.sha256(' '.join(_pip_args()).encode())
    stamp.update((base.ROOT / 'requirements.txt').read_bytes())
    stamp.update(REQUIREMENTS.read_bytes())
    for project in PROJECTS:
        stamp.update((base.ROOT / '.workspace' / project /
                      'setup.cfg').read_bytes())
    stamp_file = venv / 'stack-stamp'
    if stamp_file.exists() and stamp_file.read_text() == stamp.hexdigest():
        return
    if not (base.VENV_BIN / 'python').exists():
        subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    base.say('installing the services into %s (a few minutes the first '
             'time; log %s)' % (venv, base.LOGS / 'pip-install.log'))
    base.LOGS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SKIP_GENERATE_AUTHORS='1',
               SKIP_WRITE_GIT_CHANGELOG='1')
    with open(base.LOGS / 'pip-install.log', 'w') as log:
        subprocess.run([str(base.VENV_BIN / 'python'), '-m', 'pip', 'install',
                        '-q', *_pip_args()], check=True, env=env,
                       stdout=log, stderr=subprocess.STDOUT)
    stamp_file.write_text(stamp.hexdigest())


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
    our work: a compute of the release before the copy feature.
    """
    venv = base.OLD_VENV_BIN.parent
    sdist = pristine_nova_sdist()
    args = [str(sdist), '-r', str(base.ROOT / 'requirements.txt'),
            'libvirt-python==12.8.0']
    stamp = hashlib.sha256(' '.join(args).encode()).hexdigest()
    stamp_file = venv / 'stack-stamp'
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        return
    if not (base.OLD_VENV_BIN / 'python').exists():
        subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    base.say('installing unpatched nova %s into %s (log %s)' % (
        sdist.name, venv, base.LOGS / 'pip-install-old.log'))
    base.LOGS.mkdir(parents=True, exist_ok=True)
    with open(base.LOGS / 'pip-install-old.log', 'w') as log:
        subprocess.run([str(base.OLD_VENV_BIN / 'python'), '-m', 'pip',
                        'install', '-q', *args], check=True, stdout=log,
                       stderr=subprocess.STDOUT)
    stamp_file.write_text(stamp)
