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

"""Patched Nova's real services in one process, the way functional tests run.

API, conductor, scheduler, real placement and two libvirt compute services
on fakelibvirt, built from Nova's own functional-test fixtures, plus:

* the compute API on a REAL HTTP listener on loopback (eventlet.wsgi), so
  the real ``openstack`` CLI can drive it. Keystone is replaced by a small
  middleware that reads ``X-Auth-Token: <user>:<project>`` (user ``admin``
  gets the admin role), which OSC sends with ``--os-auth-type admin_token``;
* per compute service, what must differ between two hosts although they
  share one process: the ``ndctl list -X`` table
  (``nova.privsep.libvirt.get_pmem_namespaces``), the host address
  (``get_host_ip_addr``) and the environment the local copy helper runs
  with (the host's namespace allow-list and fault directory);
* the daxio stand-in (e2e/bin) on PATH, so Nova's real
  ``nova.privsep.libvirt.cleanup_vpmem`` (``daxio -z -o DEV``) really zeroes
  the stand-in files.

The class is a Nova functional TestCase because Nova's fixtures and helpers
(start_service, _create_server, _wait_for_state_change ...) live there. The
demo uses it through start()/stop(); the tests through setUp/cleanUp.
"""

import contextlib
import functools
import json
import os
import pathlib
import socket
import threading

# Nova's services run under eventlet here, as in its functional tests, so
# the HTTP listener is an eventlet one.
import eventlet  # noqa: H905
from eventlet import wsgi as eventlet_wsgi  # noqa: H905
import fixtures
from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils.fixture import uuidsentinel as uuids

from nova.api.openstack import wsgi_app
from nova.api import wsgi
from nova import context as nova_context
from nova import objects
from nova.tests import fixtures as nova_fixtures
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.tests.functional.api import client as api_client
from nova.tests.functional.libvirt import integrated_helpers
from nova.virt.libvirt import utils as libvirt_utils

from e2e import namespaces as ns_mod

CONF = cfg.CONF
LOG = logging.getLogger(__name__)
E2E_BIN = pathlib.Path(__file__).resolve().parent / 'bin'
IMAGE = '155d900f-4e14-4e4c-a73d-069cbf4541e6'    # from GlanceFixture
COPY_MICROVERSION = '2.105'


def configure_copy_options(flags, env):
    """Set the [libvirt] options of the vPMEM copy for this environment.

    The one place that knows the copy feature's option names; options that
    do not exist in the Nova tree under test are skipped (the feature is
    then absent, see ``copy_feature_status``).
    """
    wanted = {
        # Run the REAL helper behind the environment's fault injector.
        'vpmem_copy_helper': '%s %s' % (E2E_BIN / 'vpmem-copy-faults',
                                        env.helper_path),
        # nova-compute runs as root here; sudo would drop the environment
        # that carries each host's namespace allow-list.
        'vpmem_copy_root_helper': '',
        'vpmem_copy_streams': env.streams,
        'vpmem_copy_ssh_cipher': 'aes128-gcm@openssh.com',
        'vpmem_copy_timeout': env.copy_timeout,
    }
    wanted.update(env.copy_options)
    known = {opt for opt in CONF.libvirt}
    for name, value in wanted.items():
        if name in known:
            flags(**{name: value, 'group': 'libvirt'})


class HostEnvironment(object):
    """Puts one host's variables in the process environment at a time.

    Both computes live in this process, and the helper processes a driver
    starts locally inherit the process environment, which must be their
    host's (allow-list, faults). Calls of one host run together; a call of
    the other host waits until they all returned.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._host = None
        self._calls = 0
        self._saved = {}

    @contextlib.contextmanager
    def on(self, host):
        with self._cond:
            while self._calls and self._host is not host:
                self._cond.wait()
            if not self._calls:
                self._host = host
                self._saved = {k: os.environ.get(k)
                               for k in host.environment}
                os.environ.update(host.environment)
            self._calls += 1
        try:
            yield
        finally:
            with self._cond:
                self._calls -= 1
                if not self._calls:
                    for key, value in self._saved.items():
                        if value is None:
                            os.environ.pop(key, None)
                        else:
                            os.environ[key] = value
                    self._host = None
                    self._cond.notify_all()


class KeystoneStandIn(object):
    """Maps OSC's ``X-Auth-Token: user:project`` to the fixture's headers.

    The functional fixtures replace keystone's context with one built from
    X-Auth-User / X-Auth-Project-Id / X-Roles; this fills them in. It also
    answers identity version discovery on /identity/v3: OSC 10.5 checks
    that identity is v3 before some compute commands (flavor create), and
    with a token endpoint it would discover the version from Nova's URL.
    """

    IDENTITY = '/identity/v3'

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        if environ.get('PATH_INFO', '').rstrip('/') == self.IDENTITY:
            body = json.dumps({'version': {
                'id': 'v3.14', 'status': 'stable', 'media-types': [],
                'links': [{'rel': 'self', 'href': self.IDENTITY + '/'}]}})
            start_response('200 OK', [('Content-Type', 'application/json')])
            return [body.encode()]
        token = environ.get('HTTP_X_AUTH_TOKEN', '')
        if ':' in token and 'HTTP_X_AUTH_USER' not in environ:
            user, project = token.split(':', 1)
            environ['HTTP_X_AUTH_USER'] = user
            environ['HTTP_X_AUTH_PROJECT_ID'] = project
            environ['HTTP_X_ROLES'] = ('reader,member,admin'
                                       if user == 'admin' else
                                       'reader,member')
        if 'HTTP_X_AUTH_USER' not in environ:
            start_response('401 Unauthorized',
                           [('Content-Type', 'text/plain')])
            return [b'X-Auth-Token user:project required\n']
        return self.app(environ, start_response)


class NovaCloud(integrated_helpers.LibvirtProviderUsageBaseTestCase):
    """The cloud: Nova services with two compute hosts A and B.

    ``env`` is an e2e.environment.Environment (hosts, namespaces, options).
    """

    # Set by the caller before setUp (a TestCase cannot take arguments).
    env = None
    # Start a fakelibvirt domain for each server, so that the driver sees
    # its guest running (and stops and restarts it).
    running_guests = False

    def runTest(self):         # unittest needs a test method to exist
        pass

    def setUp(self):
        super().setUp()
        env = self.env
        self.host_environment = HostEnvironment()
        self.flags(pmem_namespaces=ns_mod.PMEM_NAMESPACES_OPTION,
                   group='libvirt')
        self.flags(instances_path=str(env.base / 'instances'))
        # Each host's record of whose data its namespaces hold lives in
        # the state path; nova's API paste file is found through it too.
        api_paste = CONF.wsgi.api_paste_config     # resolved: absolute
        self.flags(state_path=str(env.base / 'state'))
        self.flags(api_paste_config=api_paste, group='wsgi')
        self.flags(allow_resize_to_same_host=False)
        configure_copy_options(self.flags, env)
        # Nova's privsep entry points run in-process (no privsep daemon),
        # for real: cleanup_vpmem really runs `daxio -z -o DEV`.
        self.useFixture(nova_fixtures.PrivsepFixture())
        self.useFixture(fixtures.EnvironmentVariable(
            'PATH', '%s:%s' % (E2E_BIN, os.environ['PATH'])))
        self.useFixture(fixtures.EnvironmentVariable(
            'NOVA_E2E_FAULTS', str(env.faults_dir)))
        self.useFixture(nova_fixtures.LibvirtImageBackendFixture())
        self.useFixture(nova_fixtures.CGroupsFixture())
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.LibvirtDriver._get_local_gb_info',
            return_value={'total': 128, 'used': 44, 'free': 84}))
        # fakelibvirt guests have no disks to move.
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.LibvirtDriver._get_instance_disk_info',
            return_value=[]))
        self.mock_conn = self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.host.Host._get_new_connection')).mock
        # Each compute reads its own host's `ndctl list -X`.
        self._starting = None
        self.useFixture(fixtures.MockPatch(
            'nova.privsep.libvirt.get_pmem_namespaces',
            side_effect=lambda: self._starting.namespaces.ndctl_json))
        self.zeroed = []        # (host name, devpath) in order
        self.computes = {}
        self.http_url = self._serve_http()
        self.admin_http = api_client.TestOpenStackClient(
            'admin', self.http_url, project_id=self.api.project_id,
            roles=['reader', 'member', 'admin'])
        self.admin_http.microversion = 'latest'
        self.api.microversion = 'latest'
        self.admin_api.microversion = 'latest'
        for host in env.hosts:
            self.computes[host.name] = self._start_host(host)

    # -- HTTP ---------------------------------------------------------------

    def _serve_http(self):
        app = KeystoneStandIn(wsgi.Loader().load_app('osapi_compute'))
        wsgi_app._setup_service(CONF.host, 'osapi_compute')
        sock = eventlet.listen(('127.0.0.1', 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        log_path = self.env.base / 'http.log'
        log = open(log_path, 'a')
        server = eventlet.spawn(  # noqa: N340
            eventlet_wsgi.server, sock, app, log=log, log_output=True)
        self.addCleanup(log.close)
        self.addCleanup(sock.close)
        self.addCleanup(server.kill)
        self.identity_url = 'http://127.0.0.1:%d%s' % (
            sock.getsockname()[1], KeystoneStandIn.IDENTITY)
        return 'http://127.0.0.1:%d/v2.1' % sock.getsockname()[1]

    # -- compute hosts ------------------------------------------------------

    def _spawn_on(self, driver):
        """Boot on fakelibvirt: what spawn does before the guest starts.

        It creates the instance directory (migrate_disk_and_power_off needs
        it) and gives the instance its namespaces through the driver's own
        _take_vpmems, which zeroes any namespace that may hold another
        instance's data. Disks and networks are left out, and the guest too
        unless ``running_guests``: then a bare fakelibvirt domain runs.
        """
        def spawn(context, instance, *args, **kwargs):
            os.makedirs(libvirt_utils.get_instance_path(instance),
                        exist_ok=True)
            driver._take_vpmems(instance, driver._get_vpmems(instance))
            if self.running_guests:
                driver._host.get_connection().defineXML(
                    '<domain type="kvm"><name>%s</name><uuid>%s</uuid>'
                    '<memory>524288</memory><vcpu>1</vcpu></domain>' % (
                        instance.name, instance.uuid)).createWithFlags(0)
        return spawn

    def _start_host(self, host):
        connection = fakelibvirt.Connection(
            'qemu:///system',
            host_info=fakelibvirt.HostInfo(cpu_nodes=2, cpu_sockets=1,
                                           cpu_cores=2, cpu_threads=2),
            hostname=host.name)
        self.mock_conn.return_value = connection
        self._starting = host
        with fixtures.MockPatch('nova.virt.node.get_local_node_uuid',
                                return_value=str(getattr(
                                    uuids, 'node_%s' % host.name))):
            compute = self._start_compute(host=host.name)
        self._starting = None
        self._make_driver_live_on(compute.driver, host)
        return compute

    def _make_driver_live_on(self, driver, host):
        """Per-instance patches that put this driver on ``host``."""
        # The address the source ssh-es to (CONF.my_ip is process-wide).
        driver.get_host_ip_addr = lambda: host.address
        driver.spawn = self._spawn_on(driver)

        # The local copy helper must see this host's allow-list and faults.
        def on_host(method):
            @functools.wraps(method)
            def wrapper(*args, **kwargs):
                with self.host_environment.on(host):
                    return method(*args, **kwargs)
            return wrapper

        for name in ('migrate_disk_and_power_off', 'finish_migration',
                     'finish_revert_migration', 'confirm_migration',
                     'destroy', 'cleanup', 'get_available_resource'):
            setattr(driver, name, on_host(getattr(driver, name)))

        # Record every namespace Nova zeroes (through its one zeroing path,
        # whichever tool zeroes), and refuse a device that is not this
        # host's: zeroing with the other host's table is a bug.
        owners = driver._vpmem_owners
        original_zero = owners.zero

        def zero(vpmems, tool=None):
            vpmems = list(vpmems)
            for vpmem in vpmems:
                host.namespaces.by_devpath(vpmem.devpath)   # KeyError if not
            original_zero(vpmems, tool=tool)
            self.zeroed.extend((host.name, v.devpath) for v in vpmems)
        owners.zero = zero

    # -- queries ------------------------------------------------------------

    def host_of(self, server_id):
        server = self.admin_api.get_server(server_id)
        return server['OS-EXT-SRV-ATTR:host']

    def namespaces_of(self, server_id):
        """[(host, Namespace)] the server holds now, in flavor order."""
        ctxt = nova_context.get_admin_context()
        instance = objects.Instance.get_by_uuid(
            ctxt, server_id, expected_attrs=['resources'])
        host = self.env.host(instance.host)
        result = []
        for resource in instance.resources or []:
            result.append(host.namespaces.by_devpath(
                resource.metadata.devpath))
        return host, result

    def migration_namespaces(self, server_id, migration):
        """(source, [Namespace], dest, [Namespace]) of a move in progress.

        Read from the migration context: old_resources on the source host,
        new_resources (claimed on the destination) on the destination host.
        """
        ctxt = nova_context.get_admin_context()
        instance = objects.Instance.get_by_uuid(
            ctxt, server_id, expected_attrs=['migration_context'])
        mc = instance.migration_context
        source = self.env.host(migration['source_compute'])
        dest = self.env.host(migration['dest_compute'])
        return (source, [source.namespaces.by_devpath(r.metadata.devpath)
                         for r in mc.old_resources or []],
                dest, [dest.namespaces.by_devpath(r.metadata.devpath)
                       for r in mc.new_resources or []])

    def max_api_version(self):
        versions = self.admin_http.api_get('/', strip_version=True).body
        for version in versions['versions']:
            if version['id'] == 'v2.1':
                return version['version']
        return None

    # -- use without a test runner -------------------------------------------

    def start(self):
        self.setUp()
        return self

    def stop(self):
        self.doCleanups()
