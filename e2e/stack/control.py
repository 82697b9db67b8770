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

"""The control plane of the cloud: database, message bus and the APIs.

Every service is a process of its own on the controller address, with its
own configuration under ``ETC/<service>/`` and its log under ``LOGS/``:

- MariaDB (``mysql``), datadir ``STATE/mysql``, on CONTROLLER:3306;
- RabbitMQ (``rabbitmq``, with its own ``epmd`` on loopback), CONTROLLER:5672;
- Keystone, Glance, Placement and the Neutron API, each a gunicorn with one
  worker on CONTROLLER:<its port>.

The HTTP services read a ``gunicorn.conf.py`` from their working directory
(``ETC/<service>``) instead of gunicorn options on the command line:
Keystone, Neutron and Nova hand ``sys.argv`` to oslo.config, which rejects
gunicorn's options ("unrecognized arguments: --bind ..."). ``start_wsgi``
does this for any service, Nova's API included.

Neutron runs its API only: ML2 with the ``local`` type driver and no
mechanism driver needs no agent, hence no RPC server either. Servers boot
with ``--nic none``; networks can be created, ports cannot be bound.
"""

from concurrent import futures
import json
import time
import urllib.parse
import urllib.request

from e2e.stack import base

CONTROLLER = base.CONTROLLER
REGION = 'RegionOne'
IDENTITY_URL = 'http://%s:5000' % CONTROLLER
AUTH_URL = IDENTITY_URL + '/v3'
IMAGE_URL = 'http://%s:9292' % CONTROLLER
PLACEMENT_URL = 'http://%s:8778' % CONTROLLER
NETWORK_URL = 'http://%s:9696' % CONTROLLER
COMPUTE_URL = 'http://%s:8774/v2.1' % CONTROLLER

DATABASES = ('keystone', 'glance', 'placement', 'neutron', 'nova_api',
             'nova_cell0', 'nova_cell1')
SERVICE_USERS = ('nova', 'glance', 'placement', 'neutron')
# (service user, catalog type, endpoint URL) of the catalog's services.
CATALOG = (('glance', 'image', IMAGE_URL),
           ('placement', 'placement', PLACEMENT_URL),
           ('neutron', 'network', NETWORK_URL),
           ('nova', 'compute', COMPUTE_URL))

MYSQL_CNF = base.ETC / 'mysql' / 'my.cnf'
MYSQL_DATA = base.STATE / 'mysql'
MYSQL_SOCKET = base.STATE / 'mysql.sock'
RABBIT_DIR = base.STATE / 'rabbitmq'
RABBIT_ETC = base.ETC / 'rabbitmq'
KEYSTONE_DIR = base.STATE / 'keystone'
GLANCE_DIR = base.STATE / 'glance'
NEUTRON_DIR = base.STATE / 'neutron'
# The paste pipelines Glance and Neutron ship (pip puts them in <venv>/etc).
VENV_ETC = base.VENV_BIN.parent / 'etc'

# Stopped in the reverse order.
PROCESSES = ('mysql', 'epmd', 'rabbitmq', 'keystone', 'glance', 'placement',
             'neutron')

GUNICORN_CONF = '''\
# Written by e2e/stack/control.py. gunicorn reads this file from its working
# directory, so its command line carries no option that oslo.config (which
# parses sys.argv) would reject.
wsgi_app = {app!r}
bind = {bind!r}
proc_name = {name!r}
# One worker (memory and CPU are scarce here); threads so that a slow
# request (an image upload) does not block the others.
workers = 1
worker_class = 'gthread'
threads = 4
timeout = 300
# Longer than any client's polling interval: with gunicorn's 2 s default an
# "openstack ... --wait" that polls every 2 s races the close of its idle
# connection and fails with "Remote end closed connection".
keepalive = 75
accesslog = '-'
'''
# neutron's port listing reads a relationship (Port.port_forwardings) that
# SQLAlchemy only adds once the mappers are configured, which the first
# query does: a worker whose first request lists ports fails with
# "AttributeError: type object 'Port' has no attribute 'port_forwardings'".
# Configure them as soon as the worker has loaded the application.
NEUTRON_HOOK = '''
def post_worker_init(worker):
    from sqlalchemy import orm
    orm.configure_mappers()
'''

RABBIT_CONF = '''\
# Written by e2e/stack/control.py.
listeners.tcp.1 = {address}:5672
# The user is created on the first boot (an empty mnesia directory); no
# "guest" is created then.
default_user = stack
default_pass = {password}
default_vhost = /
loopback_users = none
log.console = true
log.file = false
disk_free_limit.absolute = 50MB
'''

SQL_DATABASE = '''\
CREATE DATABASE IF NOT EXISTS {name} CHARACTER SET utf8;
'''

SQL_USER = '''\
CREATE USER IF NOT EXISTS 'stack'@'%' IDENTIFIED BY '{password}';
GRANT ALL PRIVILEGES ON *.* TO 'stack'@'%';
FLUSH PRIVILEGES;
'''


# -- what the other services' configuration needs --------------------------

def database_url(dbname):
    return 'mysql+pymysql://stack:%s@%s/%s?charset=utf8' % (
        base.PASSWORD, CONTROLLER, dbname)


def transport_url():
    return 'rabbit://stack:%s@%s:5672/' % (base.PASSWORD, CONTROLLER)


def clouds_yaml():
    return base.CLOUDS_YAML


def service_auth(user):
    """A [placement]/[neutron]/[glance]-style section: ``user`` as itself."""
    return {
        'auth_type': 'password',
        'auth_url': AUTH_URL,
        'username': user,
        'password': base.PASSWORD,
        'project_name': 'service',
        'user_domain_name': 'Default',
        'project_domain_name': 'Default',
        'region_name': REGION,
    }


def authtoken(user):
    """A [keystone_authtoken] section (no memcached: in-process cache)."""
    section = service_auth(user)
    del section['region_name']
    section['www_authenticate_uri'] = IDENTITY_URL
    return section


# -- helpers ----------------------------------------------------------------

def _setup(log_name, *argv, **kwargs):
    """Run a setup command; its output goes to LOGS/<log_name>-setup.log."""
    result = base.run(*[str(a) for a in argv], check=False, **kwargs)
    base.LOGS.mkdir(parents=True, exist_ok=True)
    with open(base.LOGS / ('%s-setup.log' % log_name), 'a') as log:
        log.write('$ %s\n%s%s' % (' '.join(str(a) for a in argv),
                                  result.stdout, result.stderr))
    if result.returncode:
        why = '%s failed (%d): %s' % (argv[0], result.returncode,
                                      result.stderr[-2000:])
        raise RuntimeError(why)
    return result


def start_wsgi(name, app, port, hooks='', **env):
    """Start WSGI ``app`` as process ``name`` on CONTROLLER:port; wait.

    ``env``: what the service reads its configuration location from.
    """
    workdir = base.ETC / name
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'gunicorn.conf.py').write_text(GUNICORN_CONF.format(
        app=app, bind='%s:%d' % (CONTROLLER, port), name=name) + hooks)
    base.start(name, [base.VENV_BIN / 'gunicorn'], cwd=workdir,
               env=base.venv_env(**env))
    url = 'http://%s:%d/' % (CONTROLLER, port)
    base.wait_for(url, lambda: base.http_up(url), name=name)


def _timed(name, bring_up):
    if base.running(name):
        return
    started = time.monotonic()
    bring_up()
    base.say('%s up (%.1f s)' % (name, time.monotonic() - started))


# -- MariaDB ----------------------------------------------------------------

def _mysql_sql(sql):
    """Run SQL as the database's root (socket authentication, we are root)."""
    _setup('mysql', 'mariadb', '--defaults-file=%s' % MYSQL_CNF, '-u', 'root',
           input=sql)


def _mysql_up():
    base.write_config(MYSQL_CNF, {
        'mysqld': {
            'datadir': MYSQL_DATA,
            'socket': MYSQL_SOCKET,
            'pid-file': base.STATE / 'mysql.pid',
            'bind-address': CONTROLLER,
            'port': 3306,
            'user': 'root',
            'skip-name-resolve': 1,
            # Each service keeps a connection pool per worker.
            'max_connections': 500,
            'innodb_buffer_pool_size': '64M',
            'performance_schema': 'OFF',
            'character-set-server': 'utf8',
        },
        'client': {'socket': MYSQL_SOCKET},
    })
    if not (MYSQL_DATA / 'mysql').is_dir():
        _setup('mysql', 'mariadb-install-db',
               '--defaults-file=%s' % MYSQL_CNF, '--skip-test-db',
               '--auth-root-authentication-method=socket')
    base.start('mysql', ['mariadbd', '--defaults-file=%s' % MYSQL_CNF])
    base.wait_for('mariadb', lambda: base.port_open(CONTROLLER, 3306),
                  name='mysql')
    sql = [SQL_DATABASE.format(name=name) for name in DATABASES]
    sql.append(SQL_USER.format(password=base.PASSWORD))
    _mysql_sql(''.join(sql))


# -- RabbitMQ ---------------------------------------------------------------

def _rabbit_env():
    return base.venv_env(
        # The Erlang cookie lives in $HOME: keep it in the cloud's state.
        HOME=str(RABBIT_DIR),
        # An empty file instead of /etc/rabbitmq/rabbitmq-env.conf.
        RABBITMQ_CONF_ENV_FILE=str(RABBIT_ETC / 'rabbitmq-env.conf'),
        RABBITMQ_CONFIG_FILE=str(RABBIT_ETC / 'rabbitmq.conf'),
        RABBITMQ_ENABLED_PLUGINS_FILE=str(RABBIT_ETC / 'enabled_plugins'),
        RABBITMQ_MNESIA_BASE=str(RABBIT_DIR / 'mnesia'),
        RABBITMQ_LOG_BASE=str(RABBIT_DIR / 'log'),
        RABBITMQ_LOGS='-',
        RABBITMQ_PID_FILE=str(RABBIT_DIR / 'rabbitmq.pid'),
        RABBITMQ_NODENAME='stack@localhost',
        # Erlang distribution on loopback only (epmd is ours, see below).
        ERL_EPMD_ADDRESS='127.0.0.1',
        RABBITMQ_DIST_PORT='25672',
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
            '-kernel inet_dist_use_interface {127,0,0,1}'),
    )


def _epmd_up():
    # Erlang would start "epmd -daemon" itself: a detached process that
    # down() could not stop. Ours runs in the foreground, on loopback.
    if base.port_open('127.0.0.1', 4369):
        return
    base.start('epmd', ['epmd', '-address', '127.0.0.1'])
    base.wait_for('epmd', lambda: base.port_open('127.0.0.1', 4369),
                  name='epmd')


def _rabbit_up():
    RABBIT_ETC.mkdir(parents=True, exist_ok=True)
    RABBIT_DIR.mkdir(parents=True, exist_ok=True)
    (RABBIT_ETC / 'rabbitmq-env.conf').write_text('')
    (RABBIT_ETC / 'enabled_plugins').write_text('[].\n')
    (RABBIT_ETC / 'rabbitmq.conf').write_text(RABBIT_CONF.format(
        address=CONTROLLER, password=base.PASSWORD))
    _epmd_up()
    base.start('rabbitmq', ['/usr/lib/rabbitmq/bin/rabbitmq-server'],
               env=_rabbit_env())
    base.wait_for('rabbitmq', lambda: base.port_open(CONTROLLER, 5672),
                  name='rabbitmq')


# -- Keystone ---------------------------------------------------------------

def _keystone_conf():
    return base.write_config(base.ETC / 'keystone' / 'keystone.conf', {
        'database': {'connection': database_url('keystone')},
        'token': {'provider': 'fernet'},
        'fernet_tokens': {'key_repository': KEYSTONE_DIR / 'fernet-keys'},
        'credential': {'key_repository': KEYSTONE_DIR / 'credential-keys'},
        'identity': {
            # Cheap hashes: every token request checks a password, and
            # this is a test cloud on two cores.
            'password_hash_rounds': 4,
            # bcrypt's own limit; the default (4096) makes Keystone warn
            # on every password check.
            'max_password_length': 72,
        },
    })


def _keystone_up():
    conf = _keystone_conf()
    manage = [base.VENV_BIN / 'keystone-manage', '--config-file', conf]
    KEYSTONE_DIR.mkdir(parents=True, exist_ok=True)
    owner = ['--keystone-user', 'root', '--keystone-group', 'root']
    for keys in ('fernet', 'credential'):
        if not (KEYSTONE_DIR / ('%s-keys' % keys) / '0').exists():
            _setup('keystone', *manage, '%s_setup' % keys, *owner)
    _setup('keystone', *manage, 'db_sync')
    # The password through the environment, not on a command line.
    _setup('keystone', *manage, 'bootstrap',
           '--bootstrap-admin-url', AUTH_URL,
           '--bootstrap-internal-url', AUTH_URL,
           '--bootstrap-public-url', AUTH_URL,
           '--bootstrap-region-id', REGION,
           env=base.venv_env(OS_BOOTSTRAP_PASSWORD=base.PASSWORD))
    start_wsgi('keystone', 'keystone.wsgi.api:application', 5000,
               OS_KEYSTONE_CONFIG_DIR=str(conf.parent))


def request(method, url, body=None, auth_token=None, headers=None):
    """One JSON request; (response headers, decoded body)."""
    headers = dict(headers or {}, Accept='application/json')
    data = None
    if body is not None:
        headers['Content-Type'] = 'application/json'
        data = json.dumps(body).encode()
    if auth_token:
        headers['X-Auth-Token'] = auth_token
    request = urllib.request.Request(url, data=data, headers=headers,
                                     method=method)
    with urllib.request.urlopen(request, timeout=60) as response:
        text = response.read()
        return response.headers, json.loads(text) if text else {}


def token(user='admin', project='admin'):
    """A project-scoped token of ``user`` (every password is PASSWORD)."""
    domain = {'id': 'default'}
    headers, _body = request('POST', AUTH_URL + '/auth/tokens', {'auth': {
        'identity': {'methods': ['password'], 'password': {'user': {
            'name': user, 'domain': domain, 'password': base.PASSWORD}}},
        'scope': {'project': {'name': project, 'domain': domain}}}})
    return headers['X-Subject-Token']


def placement(path, auth_token):
    """GET path from placement with auth_token; the decoded body."""
    return request('GET', PLACEMENT_URL + path, auth_token=auth_token)[1]


class _Identity(object):
    """Find-or-create on Keystone's API as admin, so up() can run again."""

    def __init__(self):
        self.token = token()

    def call(self, method, path, body=None):
        return request(method, '%s/%s' % (AUTH_URL, path), body,
                        self.token)[1]

    def ensure(self, collection, query, body=None):
        """The id of the first ``collection`` entry matching ``query``."""
        found = self.call('GET', '%s?%s' % (
            collection, urllib.parse.urlencode(query)))[collection]
        if found:
            return found[0]['id']
        member = collection[:-1]
        return self.call('POST', collection,
                         {member: body or query})[member]['id']

    def project(self, name):
        return self.ensure('projects', {'name': name, 'domain_id': 'default'})

    def user(self, name, project_id):
        return self.ensure('users', {'name': name, 'domain_id': 'default'}, {
            'name': name, 'domain_id': 'default', 'password': base.PASSWORD,
            'default_project_id': project_id})

    def grant(self, project_id, user_id, role):
        role_id = self.ensure('roles', {'name': role})
        self.call('PUT', 'projects/%s/users/%s/roles/%s' % (
            project_id, user_id, role_id))

    def endpoints(self, name, kind, url):
        service_id = self.ensure('services', {'type': kind},
                                 {'type': kind, 'name': name})
        for interface in ('public', 'internal', 'admin'):
            self.ensure('endpoints', {
                'service_id': service_id, 'interface': interface,
                'region_id': REGION}, {
                'service_id': service_id, 'interface': interface,
                'region_id': REGION, 'url': url})


def _register():
    """The service users, the demo user and the catalog."""
    identity = _Identity()
    service = identity.project('service')
    for name in SERVICE_USERS:
        user = identity.user(name, service)
        # "service" too: the secure-RBAC policies ask for it on
        # service-to-service calls (Nova to Neutron, Neutron to Nova).
        for role in ('admin', 'service'):
            identity.grant(service, user, role)
    demo = identity.project('demo')
    identity.grant(demo, identity.user('demo', demo), 'member')
    for name, kind, url in CATALOG:
        identity.endpoints(name, kind, url)


def _yaml(value, indent=0):
    lines = []
    for key, item in value.items():
        if isinstance(item, dict):
            lines.append('%s%s:' % (' ' * indent, key))
            lines += _yaml(item, indent + 2)
        else:
            lines.append('%s%s: %s' % (' ' * indent, key, item))
    return lines


def _cloud(user, project):
    return {'auth': {'auth_url': AUTH_URL, 'username': user,
                     'password': base.PASSWORD, 'project_name': project,
                     'user_domain_name': 'Default',
                     'project_domain_name': 'Default'},
            'identity_api_version': 3, 'region_name': REGION}


def _write_clouds_yaml():
    clouds = {'clouds': {'admin': _cloud('admin', 'admin'),
                         'demo': _cloud('demo', 'demo')}}
    clouds_yaml().write_text('\n'.join(_yaml(clouds)) + '\n')


# -- Glance, Placement, Neutron ---------------------------------------------

def _glance_up():
    conf = base.write_config(base.ETC / 'glance' / 'glance-api.conf', {
        'DEFAULT': {
            'enabled_backends': 'local:file',
            'image_cache_dir': GLANCE_DIR / 'cache',
            'worker_self_reference_url': IMAGE_URL,
        },
        'database': {'connection': database_url('glance')},
        'glance_store': {'default_backend': 'local'},
        'local': {'filesystem_store_datadir': GLANCE_DIR / 'images'},
        # The stores Glance reserves for itself (image import).
        'os_glance_staging_store': {
            'filesystem_store_datadir': GLANCE_DIR / 'staging'},
        'os_glance_tasks_store': {
            'filesystem_store_datadir': GLANCE_DIR / 'tasks'},
        'paste_deploy': {
            'flavor': 'keystone',
            'config_file': VENV_ETC / 'glance' / 'glance-api-paste.ini'},
        'keystone_authtoken': authtoken('glance'),
        'oslo_concurrency': {'lock_path': GLANCE_DIR / 'locks'},
    })
    for sub in ('images', 'staging', 'tasks', 'cache', 'locks'):
        (GLANCE_DIR / sub).mkdir(parents=True, exist_ok=True)
    _setup('glance', base.VENV_BIN / 'glance-manage', '--config-file', conf,
           'db_sync')
    start_wsgi('glance', 'glance.wsgi.api:application', 9292,
               OS_GLANCE_CONFIG_DIR=str(conf.parent))


def _placement_up():
    conf = base.write_config(base.ETC / 'placement' / 'placement.conf', {
        'placement_database': {'connection': database_url('placement')},
        'api': {'auth_strategy': 'keystone'},
        'keystone_authtoken': authtoken('placement'),
    })
    _setup('placement', base.VENV_BIN / 'placement-manage', '--config-file',
           conf, 'db', 'sync')
    start_wsgi('placement', 'placement.wsgi.api:application', 8778,
               OS_PLACEMENT_CONFIG_DIR=str(conf.parent))


def _neutron_conf():
    return base.write_config(base.ETC / 'neutron' / 'neutron.conf', {
        'DEFAULT': {
            'core_plugin': 'ml2',
            # ML2's port listing expects the port-forwarding model
            # (Port.port_forwardings), which only these plugins load.
            'service_plugins': 'router,port_forwarding',
            'auth_strategy': 'keystone',
            'transport_url': transport_url(),
            'api_paste_config': VENV_ETC / 'neutron' / 'api-paste.ini',
            'state_path': NEUTRON_DIR,
            # There is no DHCP agent to tell about networks.
            'dhcp_agent_notification': 'false',
        },
        'database': {'connection': database_url('neutron')},
        'keystone_authtoken': authtoken('neutron'),
        # Neutron tells Nova about port events.
        'nova': service_auth('nova'),
        # Project networks of type "local" need no agent and no device.
        'ml2': {'type_drivers': 'local,flat',
                'tenant_network_types': 'local',
                'mechanism_drivers': '',
                'extension_drivers': 'port_security'},
        'ml2_type_flat': {'flat_networks': '*'},
        'oslo_concurrency': {'lock_path': NEUTRON_DIR / 'lock'},
    })


def _neutron_up():
    conf = _neutron_conf()
    (NEUTRON_DIR / 'lock').mkdir(parents=True, exist_ok=True)
    _setup('neutron', base.VENV_BIN / 'neutron-db-manage', '--config-file',
           conf, 'upgrade', 'heads')
    start_wsgi('neutron', 'neutron.wsgi.api:application', 9696,
               hooks=NEUTRON_HOOK, OS_NEUTRON_CONFIG_DIR=str(conf.parent),
               OS_NEUTRON_CONFIG_FILES=conf.name)


# -- the public API ----------------------------------------------------------

def up():
    """Start what is not running yet, in dependency order.

    RabbitMQ boots while MariaDB and Keystone come up (nothing before
    Neutron needs it), then the three other APIs come up together: their
    database migrations and application loads are what up() waits for.
    """
    started = time.monotonic()
    base.ensure_bridge()
    with futures.ThreadPoolExecutor() as pool:
        rabbit = pool.submit(_timed, 'rabbitmq', _rabbit_up)
        _timed('mysql', _mysql_up)
        _timed('keystone', _keystone_up)
        _register()
        _write_clouds_yaml()
        rabbit.result()
        apis = [pool.submit(_timed, name, bring_up) for name, bring_up in (
            ('glance', _glance_up), ('placement', _placement_up),
            ('neutron', _neutron_up))]
        for api in apis:
            api.result()
    base.say('control plane up (%.1f s); clouds in %s' % (
        time.monotonic() - started, clouds_yaml()))


def down():
    """Stop every process up() started; the state stays for the next up()."""
    for name in reversed(PROCESSES):
        if base.running(name):
            base.stop(name)
            base.say('%s stopped' % name)
