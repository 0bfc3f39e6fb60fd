"""The secured local stack (``passerelle up --secure``): TLS, SCRAM users and ACLs.

Everything secret lives in ``<state_dir>/secure/`` (folder 0700, files 0600)
and is made once, on the first secure ``up``:

- ``ca.pem`` / ``ca-key.pem``: a throwaway certificate authority;
- ``broker.pem``: the broker's keystore (PEM: PKCS#8 key, then the
  certificate chain) for 127.0.0.1 / localhost, signed by that CA;
- ``registry.pem`` / ``registry-key.pem``: the schema registry's HTTPS
  certificate, same CA, same names;
- ``passwords.json``: one random password per principal (never printed);
- ``registry-users.json``: the registry's users (salted SHA-256, role);
- ``<component>.properties`` (librdkafka / ``kcat -F``) and
  ``<component>.env`` (``PASSERELLE_*`` variables naming the former, the
  registry URL, its CA and basic-auth credentials), one pair per principal.

The broker: one SASL_SSL listener (SCRAM-SHA-512) for clients and between
brokers (as ``admin``, whose credential is bootstrapped at storage format
time, KIP-900), the KRaft controller listener on SASL_PLAINTEXT with a static
PLAIN user ``controller`` (SCRAM is not available to controllers: their
credentials would live in the very metadata log they serve), and
``StandardAuthorizer`` with ``admin`` and ``controller`` as super users and
nothing allowed that ``acls.GRANTS`` does not grant. After the broker answers,
:func:`provision` creates the components' SCRAM users and ACLs through the
Admin API, idempotently.

This module imports nothing else of ours (design rule for ``deploy/``).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from passerelle.deploy.local import acls

SECURE_DIR = "secure"
LISTENER = "SASL_SSL"
CONTROLLER_LISTENER = "CONTROLLER"
MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192  # Kafka's minimum for SCRAM-SHA-512 is 4096
CERT_DAYS = 825


def secure_dir(state_dir: Path) -> Path:
    return state_dir / SECURE_DIR


def is_secure(state_dir: Path) -> bool:
    """A state folder is secure once ``up --secure`` made its secrets folder."""
    return secure_dir(state_dir).is_dir()


@dataclass(frozen=True)
class Material:
    """Paths of the secure stack's files (see the module docstring)."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca-key.pem"

    @property
    def broker_keystore(self) -> Path:
        return self.root / "broker.pem"

    @property
    def registry_cert(self) -> Path:
        return self.root / "registry.pem"

    @property
    def registry_key(self) -> Path:
        return self.root / "registry-key.pem"

    @property
    def passwords_file(self) -> Path:
        return self.root / "passwords.json"

    @property
    def registry_users(self) -> Path:
        return self.root / "registry-users.json"

    def properties(self, component: str) -> Path:
        return self.root / f"{component}.properties"

    def env_file(self, component: str) -> Path:
        return self.root / f"{component}.env"

    def passwords(self) -> dict[str, str]:
        data: dict[str, str] = json.loads(self.passwords_file.read_text())
        return data


def material(state_dir: Path) -> Material:
    return Material(secure_dir(state_dir))


# --- private files -------------------------------------------------------------------------------


def _write_private(path: Path, data: bytes | str) -> None:
    """Write ``path`` readable by its owner only, atomically (no window where it is world-readable)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, raw)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_private(path: Path, data: bytes | str) -> bool:
    """Write unless ``path`` already holds exactly ``data`` (and is private); True when written."""
    raw = data.encode() if isinstance(data, str) else data
    with contextlib.suppress(OSError):
        if path.read_bytes() == raw and path.stat().st_mode & 0o077 == 0:
            return False
    _write_private(path, raw)
    return True


# --- passwords -----------------------------------------------------------------------------------


def _ensure_passwords(m: Material) -> dict[str, str]:
    """One random password per principal, generated once (new principals get theirs on the next ``up``)."""
    try:
        passwords = m.passwords()
    except FileNotFoundError:
        passwords = {}
    changed = False
    for name in (*acls.COMPONENTS, acls.CONTROLLER):
        if name not in passwords:
            passwords[name] = secrets.token_urlsafe(24)  # [A-Za-z0-9_-]: safe in JAAS and --add-scram
            changed = True
    if changed:
        _write_private(m.passwords_file, json.dumps(passwords, indent=1, sort_keys=True) + "\n")
    return passwords


def registry_users(passwords: dict[str, str], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The registry's users file: a random salt and SHA-256(salt + password) per component, and its role.

    Entries of ``previous`` that still match the password and role are kept, so
    the file changes only when a principal is added or a password changes.
    """
    old = (previous or {}).get("users", {})
    users = {}
    for name in acls.COMPONENTS:
        password, role = passwords[name], acls.registry_role(name)
        entry = old.get(name)
        with contextlib.suppress(Exception):
            salt = bytes.fromhex(entry["salt"])
            if entry["role"] == role and secrets.compare_digest(
                entry["sha256"], hashlib.sha256(salt + password.encode()).hexdigest()
            ):
                users[name] = entry
                continue
        salt = secrets.token_bytes(16)
        users[name] = {"salt": salt.hex(), "sha256": hashlib.sha256(salt + password.encode()).hexdigest(), "role": role}
    return {"users": users}


# --- certificates ----------------------------------------------------------------------------------


def _names(host: str) -> list[Any]:
    from cryptography import x509

    names: list[Any] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    else:
        if str(ip) != "127.0.0.1":
            names.append(x509.IPAddress(ip))
    return names


def _make_ca(m: Material) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "passerelle local stack CA (throwaway)")])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS + 30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(m.ca_key, key_pem)
    _write_private(m.ca, cert.public_bytes(serialization.Encoding.PEM))


def _issue(m: Material, common_name: str, host: str) -> tuple[bytes, bytes]:
    """A server certificate for ``host`` (and localhost / 127.0.0.1) signed by the CA: (cert PEM, PKCS#8 key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key(m.ca_key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(m.ca.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(_names(host)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _ensure_certificates(m: Material, host: str) -> None:
    if not (m.ca.exists() and m.ca_key.exists()):
        _make_ca(m)
        for path in (m.broker_keystore, m.registry_cert, m.registry_key):
            path.unlink(missing_ok=True)  # issued by another CA
    if not m.broker_keystore.exists():
        cert, key = _issue(m, "passerelle local broker", host)
        # Kafka's PEM keystore: the (unencrypted PKCS#8) key and the chain, leaf first, in one file.
        _write_private(m.broker_keystore, key + cert + m.ca.read_bytes())
    if not (m.registry_cert.exists() and m.registry_key.exists()):
        cert, key = _issue(m, "passerelle local schema registry", host)
        _write_private(m.registry_key, key)
        _write_private(m.registry_cert, cert + m.ca.read_bytes())


def ensure_material(state_dir: Path, host: str = "127.0.0.1") -> Material:
    """Make (once) the CA, the certificates, the passwords and the registry's users file."""
    m = material(state_dir)
    m.root.mkdir(parents=True, exist_ok=True)
    os.chmod(m.root, 0o700)
    passwords = _ensure_passwords(m)
    _ensure_certificates(m, host)
    previous = None
    with contextlib.suppress(OSError, ValueError):
        previous = json.loads(m.registry_users.read_text())
    users = registry_users(passwords, previous)
    write_private(m.registry_users, json.dumps(users, indent=1, sort_keys=True) + "\n")
    return m


# --- the broker's side ---------------------------------------------------------------------------------


def _jaas(module: str, **options: str) -> str:
    return f"{module} required " + " ".join(f'{k}="{v}"' for k, v in options.items()) + ";"


def broker_properties(m: Material, host: str, kafka_port: int, controller_port: int) -> list[str]:
    """The listener, SASL, TLS and authorizer lines of a secure single-node KRaft broker."""
    pw = m.passwords()
    admin, controller = pw[acls.ADMIN], pw[acls.CONTROLLER]
    lower = LISTENER.lower()
    return [
        f"listeners={LISTENER}://{host}:{kafka_port},{CONTROLLER_LISTENER}://{host}:{controller_port}",
        f"advertised.listeners={LISTENER}://{host}:{kafka_port}",
        f"controller.listener.names={CONTROLLER_LISTENER}",
        f"listener.security.protocol.map={LISTENER}:SASL_SSL,{CONTROLLER_LISTENER}:SASL_PLAINTEXT",
        f"inter.broker.listener.name={LISTENER}",
        # Clients and the broker itself: SCRAM-SHA-512 over TLS; the broker logs in as admin (bootstrapped at format).
        f"listener.name.{lower}.sasl.enabled.mechanisms={MECHANISM}",
        f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
        f"listener.name.{lower}.{MECHANISM.lower()}.sasl.jaas.config="
        + _jaas("org.apache.kafka.common.security.scram.ScramLoginModule", username=acls.ADMIN, password=admin),
        # The controller listener: SASL/PLAIN with one static user (KRaft controllers cannot use SCRAM).
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.plain.sasl.jaas.config="
        + _jaas(
            "org.apache.kafka.common.security.plain.PlainLoginModule",
            username=acls.CONTROLLER,
            password=controller,
            **{f"user_{acls.CONTROLLER}": controller},
        ),
        # TLS: PEM keystore (key + chain) and truststore (the CA) as files.
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={m.broker_keystore}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={m.ca}",
        "ssl.client.auth=none",
        "ssl.endpoint.identification.algorithm=https",
        # Authorization: nothing but what acls.GRANTS grants; admin and the controller are super users.
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        f"super.users=User:{acls.ADMIN};User:{acls.CONTROLLER}",
        "allow.everyone.if.no.acl.found=false",
    ]


def format_arguments(m: Material) -> list[str]:
    """``StorageTool format`` arguments that bootstrap the admin's SCRAM credential (KIP-900)."""
    return ["--add-scram", f"{MECHANISM}=[name={acls.ADMIN},password={m.passwords()[acls.ADMIN]}]"]


# --- the clients' side ---------------------------------------------------------------------------------


def client_config(m: Material, component: str, bootstrap: str) -> dict[str, str]:
    """librdkafka properties logging ``component`` in over SASL_SSL."""
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": MECHANISM,
        "sasl.username": component,
        "sasl.password": m.passwords()[component],
        "ssl.ca.location": str(m.ca),
    }


def write_client_files(m: Material, bootstrap: str, registry_url: str) -> list[Path]:
    """Each principal's ``.properties`` and ``.env`` (rewritten only when they change); returns the env files."""
    passwords = m.passwords()
    out = []
    for component in acls.COMPONENTS:
        props = client_config(m, component, bootstrap)
        write_private(m.properties(component), "".join(f"{k}={v}\n" for k, v in props.items()))
        env = {
            "PASSERELLE_KAFKA_CONFIG_FILE": str(m.properties(component)),
            "PASSERELLE_SCHEMA_REGISTRY_URL": registry_url,
            "PASSERELLE_SCHEMA_REGISTRY_SSL_CA_LOCATION": str(m.ca),
            "PASSERELLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": f"{component}:{passwords[component]}",
        }
        write_private(m.env_file(component), "".join(f"{k}={v}\n" for k, v in env.items()))
        out.append(m.env_file(component))
    return out


def _read_pairs(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def component_env(state_dir: Path, component: str) -> dict[str, str]:
    """The ``PASSERELLE_*`` variables a process of ``component`` runs with on the secure stack."""
    path = material(state_dir).env_file(component)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is the stack in {state_dir} secure and up?")
    return _read_pairs(path)


def component_kafka_config(state_dir: Path, component: str) -> dict[str, str]:
    """The librdkafka config of ``component`` (its ``.properties`` file), for a Producer/Consumer/AdminClient."""
    path = material(state_dir).properties(component)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is the stack in {state_dir} secure and up?")
    return _read_pairs(path)


def registry_env(m: Material) -> dict[str, str]:
    """What the registry process needs: its users, its HTTPS certificate, its own Kafka principal."""
    return {
        "PASSERELLE_REGISTRY_AUTH_FILE": str(m.registry_users),
        "PASSERELLE_REGISTRY_SSL_CERTFILE": str(m.registry_cert),
        "PASSERELLE_REGISTRY_SSL_KEYFILE": str(m.registry_key),
        "PASSERELLE_KAFKA_CONFIG_FILE": str(m.properties("registry")),
    }


# --- users and ACLs ----------------------------------------------------------------------------------------


def _acl_binding(
    component: str, resource: str, name: str, prefixed: bool, operation: str, permission: str = "ALLOW"
) -> Any:
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    restype = {
        acls.TOPIC: ResourceType.TOPIC,
        acls.GROUP: ResourceType.GROUP,
        acls.TRANSACTIONAL_ID: ResourceType.TRANSACTIONAL_ID,
        acls.CLUSTER: ResourceType.BROKER,  # librdkafka's name for the cluster resource
    }[resource]
    pattern = ResourcePatternType.PREFIXED if prefixed else ResourcePatternType.LITERAL
    return AclBinding(
        restype, name, pattern, f"User:{component}", "*", AclOperation[operation], AclPermissionType[permission]
    )


def _key(binding: Any) -> tuple[Any, ...]:
    return (
        binding.restype,
        binding.name,
        binding.resource_pattern_type,
        binding.principal,
        binding.host,
        binding.operation,
        binding.permission_type,
    )


def provision(m: Material, admin_config: dict[str, str], timeout: float = 30.0) -> list[str]:
    """Create missing SCRAM users and ACLs, drop ACLs of our principals the table no longer grants.

    A second call changes nothing. Returns what it did, one phrase per kind of
    change (empty when nothing changed). Passwords never appear in it.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialAlteration,
        UserScramCredentialUpsertion,
    )

    passwords = m.passwords()
    admin = AdminClient({**admin_config, "log_level": 3})
    done = []

    described = admin.describe_user_scram_credentials(request_timeout=timeout)
    assert not isinstance(described, dict)
    existing_users = described.result(timeout)
    missing = [
        c
        for c in acls.COMPONENTS
        if c != acls.ADMIN
        and not any(
            info.mechanism == ScramMechanism.SCRAM_SHA_512
            for info in getattr(existing_users.get(c), "scram_credential_infos", None) or []
        )
    ]
    if missing:
        upserts: list[UserScramCredentialAlteration] = [
            UserScramCredentialUpsertion(
                c, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS), passwords[c].encode()
            )
            for c in missing
        ]
        for user, fut in admin.alter_user_scram_credentials(upserts, request_timeout=timeout).items():
            try:
                fut.result(timeout)
            except KafkaException as exc:
                raise RuntimeError(f"cannot create the SCRAM user {user}: {exc.args[0].str()}") from exc
        done.append(f"created SCRAM users {', '.join(missing)}")

    managed = {f"User:{c}" for c in acls.GRANTS}
    wanted = {_key(b): b for c in acls.GRANTS for b in (_acl_binding(c, *row) for row in acls.bindings(c))}
    anything: Any = None  # a filter's None matches any name, principal and host (the stubs say str)
    everything = AclBindingFilter(
        ResourceType.ANY, anything, ResourcePatternType.ANY, anything, anything, AclOperation.ANY, AclPermissionType.ANY
    )
    present = {_key(b): b for b in admin.describe_acls(everything, request_timeout=timeout).result(timeout)}
    to_create = [b for k, b in wanted.items() if k not in present]
    stale = [b for k, b in present.items() if k not in wanted and b.principal in managed]
    if to_create:
        for binding, fut in admin.create_acls(to_create, request_timeout=timeout).items():
            try:
                fut.result(timeout)
            except KafkaException as exc:
                raise RuntimeError(f"cannot create the ACL {binding}: {exc.args[0].str()}") from exc
        done.append(f"created {len(to_create)} ACLs")
    if stale:
        filters = [
            AclBindingFilter(
                b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation, b.permission_type
            )
            for b in stale
        ]
        for _, fut in admin.delete_acls(filters, request_timeout=timeout).items():
            fut.result(timeout)
        done.append(f"removed {len(stale)} ACLs no longer granted")
    return done
