"""Signing keys on a PKCS#11 token (smart card, HSM, SoftHSM), named by an RFC 7512 URI.

A token key is an ordinary :class:`~imaguard.crypto.PrivateKey`: its ``key`` implements
``cryptography``'s ``RSAPrivateKey`` / ``EllipticCurvePrivateKey`` interfaces, and signs on
the token. Everything that signs with a file key (``sign_file``, EVM, digest lists,
certificates and CSRs built with ``cryptography``) signs with a token key unchanged, and
writes the same bytes:

* **RSA** uses the token's raw ``CKM_RSA_PKCS`` mechanism over a DigestInfo built here
  (PKCS#1 v1.5 over a prehashed digest, RFC 8017 section 9.2), so a signature is
  byte-identical to the one the same key in a file makes;
* **ECDSA** uses ``CKM_ECDSA`` over the digest; the token answers r||s (PKCS#11 v2.40
  section 2.3.1), which is re-encoded as the DER ``Ecdsa-Sig-Value`` SEQUENCE that
  ``cryptography`` (and so a file key) produces.

The PKCS#11 binding is python-pkcs11. A forked child never uses the parent's session:
PKCS#11 v2.40 section 6.7.7 leaves a library's state undefined after ``fork()`` until the
child calls ``C_Initialize`` again, so the first signature in a new process initializes the
module afresh, logs in again and looks the key up again (``imaguard sign -r`` signs in
forked workers).
"""

from __future__ import annotations

import logging
import os
import sysconfig
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding, PKCS1v15
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import Buffer

from imaguard.crypto._keys import (
    Certificate,
    PrehashedSigner,
    PrivateKey,
    _check_supported,
    load_private_key,
)
from imaguard.errors import KeyLoadError, UsageError

if TYPE_CHECKING:
    import pkcs11

_Lib = Any
"""python-pkcs11's ``lib`` (a Cython class its stubs type as a function)."""

__all__ = [
    "PKCS11_MODULE_ENV",
    "PKCS11_PIN_ENV",
    "Pkcs11Uri",
    "TokenError",
    "default_pkcs11_module",
    "is_pkcs11_uri",
    "load_pkcs11_key",
    "load_signing_key",
]

_log = logging.getLogger(__name__)

PKCS11_PIN_ENV = "IMAGUARD_PKCS11_PIN"
"""The environment variable a token's user PIN is read from (after the URI's pin-value)."""
PKCS11_MODULE_ENV = "IMAGUARD_PKCS11_MODULE"
"""The environment variable naming the PKCS#11 module (after --pkcs11-module and the URI)."""

_P11_KIT_PROXY = "p11-kit-proxy.so"

PinPrompt = Callable[[str], str]
"""Asks for a token's PIN; given a description of the token, returns the PIN."""


class TokenError(KeyLoadError):
    """A PKCS#11 module, token or key cannot be used (missing module, wrong PIN, no object).

    ``module`` is the module's path, ``token`` the token's label (or what the URI asked
    for), ``object`` the key's label or id as the URI names it (``""`` when it named
    neither) and ``reason`` what went wrong, without those names.
    """

    def __init__(self, message: str, *, module: str, token: str = "", object: str = "") -> None:
        super().__init__(message)
        self.module = module
        self.token = token
        self.object = object
        self.reason = message


# -- RFC 7512 URIs ------------------------------------------------------------------------

_PATH_ATTRS = frozenset(
    {
        "token",
        "manufacturer",
        "serial",
        "model",
        "library-manufacturer",
        "library-description",
        "library-version",
        "object",
        "type",
        "id",
        "slot-manufacturer",
        "slot-description",
        "slot-id",
    }
)
_QUERY_ATTRS = frozenset({"pin-value", "pin-source", "module-name", "module-path"})
_OBJECT_TYPES = frozenset({"public", "private", "cert", "secret-key", "data"})


def is_pkcs11_uri(text: str) -> bool:
    """True when ``text`` is a PKCS#11 URI (``pkcs11:...``, case-insensitive scheme)."""
    return text[:7].lower() == "pkcs11:"


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed RFC 7512 PKCS#11 URI naming a token and a key on it.

    ``attributes`` holds every path and query attribute, percent-decoded (``id`` as
    bytes in :attr:`key_id`). A ``pin-value`` may stand in the path or the query (both
    spellings occur in practice); it never appears in :meth:`redacted`.
    """

    attributes: dict[str, str] = field(default_factory=dict)
    key_id: bytes | None = None

    @classmethod
    def parse(cls, text: str) -> Pkcs11Uri:
        """Parse ``pkcs11:path[?query]``; refuses unknown or repeated attributes."""
        if not is_pkcs11_uri(text):
            raise KeyLoadError(f"{_redact_text(text)}: not a PKCS#11 URI (pkcs11:...)")
        body = text[7:]
        path, _, query = body.partition("?")
        attrs: dict[str, str] = {}
        key_id: bytes | None = None
        parts = [(p, ";") for p in path.split(";") if p] + [(q, "&") for q in query.split("&") if q]
        for part, _sep in parts:
            name, eq, raw = part.partition("=")
            name = name.strip().lower()
            if not eq or not name:
                raise KeyLoadError(f"PKCS#11 URI: {name or part!r} is not an attribute=value pair")
            if name not in _PATH_ATTRS and name not in _QUERY_ATTRS and not name.startswith("x-"):
                raise KeyLoadError(
                    f"PKCS#11 URI: unknown attribute {name!r} (RFC 7512 names token, object, "
                    "id, type, serial, manufacturer, model, slot-id, pin-value, pin-source, "
                    "module-path, module-name, ...)"
                )
            if name in attrs:
                raise KeyLoadError(f"PKCS#11 URI: attribute {name!r} given twice")
            if name == "id":
                key_id = urllib.parse.unquote_to_bytes(raw)
                attrs[name] = key_id.hex()
            else:
                attrs[name] = urllib.parse.unquote(raw, errors="strict")
        kind = attrs.get("type")
        if kind is not None and kind not in _OBJECT_TYPES:
            raise KeyLoadError(f"PKCS#11 URI: type={kind!r} is not one of {sorted(_OBJECT_TYPES)}")
        if "slot-id" in attrs and not attrs["slot-id"].isdigit():
            raise KeyLoadError(f"PKCS#11 URI: slot-id={attrs['slot-id']!r} is not a number")
        return cls(attrs, key_id)

    def get(self, name: str) -> str | None:
        return self.attributes.get(name)

    @property
    def token(self) -> str:
        """What the URI says about the token, for messages (its label, else its serial)."""
        return self.attributes.get("token") or self.attributes.get("serial") or "(any token)"

    @property
    def object(self) -> str:
        """What the URI says about the key, for messages (``object=`` and/or ``id=``)."""
        parts = []
        if "object" in self.attributes:
            parts.append(f"object={self.attributes['object']}")
        if self.key_id is not None:
            parts.append(f"id={self.key_id.hex()}")
        return ";".join(parts)

    def redacted(self) -> str:
        """The URI without its PIN, fit for messages, logs and ``PrivateKey.source``."""
        path: list[str] = []
        query: list[str] = []
        for name, value in self.attributes.items():
            if name == "pin-value":
                continue
            if name == "id" and self.key_id is not None:
                quoted = "".join(f"%{b:02x}" for b in self.key_id)
            else:
                quoted = urllib.parse.quote(value, safe="")
            (query if name in _QUERY_ATTRS else path).append(f"{name}={quoted}")
        out = "pkcs11:" + ";".join(path)
        return out + ("?" + "&".join(query) if query else "")


def _redact_text(text: str) -> str:
    """``text`` with anything after a ``pin-value=`` cut, for errors about unparsable URIs."""
    lowered = text.lower()
    at = lowered.find("pin-value=")
    return text if at < 0 else text[: at + len("pin-value=")] + "..."


# -- finding the module -------------------------------------------------------------------


def _proxy_candidates() -> list[str]:
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = [f"/usr/lib/{multiarch}"] if multiarch else []
    dirs += ["/usr/lib64", "/usr/lib"]
    return [os.path.join(d, _P11_KIT_PROXY) for d in dirs]


def default_pkcs11_module() -> str:
    """The module used when none is named: ``IMAGUARD_PKCS11_MODULE``, else p11-kit's proxy.

    p11-kit's proxy module loads every module registered with p11-kit (SoftHSM, OpenSC,
    ...), so most tokens are found through it. The first existing proxy path wins; when
    there is none, the usual path is returned (and loading it reports it missing).
    """
    env = os.environ.get(PKCS11_MODULE_ENV)
    if env:
        return env
    candidates = _proxy_candidates()
    for path in candidates:
        if os.path.exists(path):
            return path
    return candidates[0]


def _module_for(uri: Pkcs11Uri, module: str | None) -> str:
    if module:
        return module
    if uri.get("module-path"):
        return str(uri.get("module-path"))
    if uri.get("module-name"):
        # RFC 7512: a module name without a path, looked up in the usual places.
        name = str(uri.get("module-name"))
        name = name if name.endswith(".so") else name + ".so"
        for d in {os.path.dirname(p) for p in _proxy_candidates()}:
            for candidate in (os.path.join(d, name), os.path.join(d, "pkcs11", name)):
                if os.path.exists(candidate):
                    return candidate
        return name
    return default_pkcs11_module()


def _load_library(module: str, uri: Pkcs11Uri) -> _Lib:
    try:
        import pkcs11 as p11
    except ImportError as e:  # pragma: no cover - a dependency of imaguard
        raise TokenError(
            f"PKCS#11 keys need the python-pkcs11 package ({e})", module=module, token=uri.token
        ) from e
    if os.sep in module and not os.path.exists(module):
        hint = (
            f" (give --pkcs11-module PATH or set {PKCS11_MODULE_ENV}; Debian's p11-kit-modules "
            f"package installs {_P11_KIT_PROXY})"
            if os.path.basename(module) == _P11_KIT_PROXY
            else ""
        )
        raise TokenError(
            f"PKCS#11 module {module}: no such file{hint}",
            module=module,
            token=uri.token,
            object=uri.object,
        )
    try:
        lib = p11.lib(module)
        if not lib.initialized:
            lib.initialize()
    except p11.PKCS11Error as e:
        raise TokenError(
            f"PKCS#11 module {module}: cannot load it ({_describe_p11(e)})",
            module=module,
            token=uri.token,
            object=uri.object,
        ) from e
    return lib


def _describe_p11(e: BaseException) -> str:
    """A PKCS#11 failure as ``CKR_...``-like text: python-pkcs11 names each return value."""
    text = str(e).strip()
    name = type(e).__name__
    return f"{name}: {text}" if text and text != name else name


# -- the signer ---------------------------------------------------------------------------

_INITIALIZED_BY: dict[str, int] = {}
"""Module path -> the process that (re)initialized it last; a forked child differs."""


@dataclass
class _TokenSession:
    """An open, logged-in session on the token holding one private key, per process.

    ``pin_source`` is asked for the PIN the first time a login needs one; the answer is
    kept for the logins a forked child makes again.
    """

    module: str
    uri: Pkcs11Uri
    pin_source: Callable[[], str | None]
    pin: str | None = field(default=None, repr=False)
    token_label: str = ""
    key_type: str = ""
    _pid: int = -1
    _session: Any = None
    _key: Any = None
    _always_authenticate: bool = False
    _pin_asked: bool = False

    def open(self) -> None:
        """Load the module, find the token, log in and find the private key."""
        import pkcs11 as p11

        lib = _load_library(self.module, self.uri)
        pid = os.getpid()
        if _INITIALIZED_BY.get(self.module, pid) != pid:
            # A forked child: the module was initialized by the parent, whose sessions
            # are not ours to use. Once per module and process (another key on the same
            # module then shares the new initialization).
            try:
                lib.finalize()
            except p11.PKCS11Error:
                _log.debug("C_Finalize in a forked child failed (expected with p11-kit)")
            try:
                lib.initialize()
            except p11.PKCS11Error as e:
                raise self._error(f"cannot initialize the module again: {_describe_p11(e)}") from e
        _INITIALIZED_BY[self.module] = pid
        token = self._find_token(lib)
        self.token_label = token.label
        session = self._login(token)
        key = self._find_key(session)
        self._session, self._key, self._pid = session, key, os.getpid()
        try:
            self._always_authenticate = bool(key[p11.Attribute.ALWAYS_AUTHENTICATE])
        except p11.PKCS11Error:
            self._always_authenticate = False

    def _error(self, reason: str, **names: str) -> TokenError:
        where = names.get("where", f"token {self.token_label or self.uri.token}")
        return TokenError(
            f"{where}: {reason} (module {self.module})",
            module=self.module,
            token=self.token_label or self.uri.token,
            object=self.uri.object,
        )

    def _find_token(self, lib: _Lib) -> pkcs11.Token:
        import pkcs11 as p11

        uri = self.uri
        wanted = {
            "token": "label",
            "manufacturer": "manufacturer_id",
            "serial": "serial",
            "model": "model",
        }
        matches: list[pkcs11.Token] = []
        seen: list[str] = []
        try:
            slots = lib.get_slots(token_present=True)
            for slot in slots:
                if uri.get("slot-id") is not None and slot.slot_id != int(str(uri.get("slot-id"))):
                    continue
                try:
                    token = slot.get_token()
                except (p11.TokenNotPresent, p11.TokenNotRecognised):
                    continue
                if not token.flags & p11.TokenFlag.TOKEN_INITIALIZED:
                    continue  # a free slot (SoftHSM keeps one): no keys on it
                seen.append(token.label)
                ok = True
                for attr, prop in wanted.items():
                    want = uri.get(attr)
                    if want is None:
                        continue
                    have = getattr(token, prop)
                    if isinstance(have, bytes):
                        have = have.decode(errors="replace")
                    if str(have).strip() != want:
                        ok = False
                if ok:
                    matches.append(token)
        except p11.PKCS11Error as e:
            raise self._error(f"cannot list the module's tokens: {_describe_p11(e)}") from e
        if not matches:
            present = ", ".join(repr(s) for s in seen) or "none"
            raise self._error(
                f"no token matches {uri.redacted()} (tokens present: {present})",
                where=f"token {uri.token}",
            )
        if len(matches) > 1:
            raise self._error(
                f"{len(matches)} tokens match {uri.redacted()}; name one with token= or serial=",
                where=f"token {uri.token}",
            )
        return matches[0]

    def _login(self, token: pkcs11.Token) -> pkcs11.Session:
        import pkcs11 as p11

        needs_login = bool(token.flags & p11.TokenFlag.LOGIN_REQUIRED)
        try:
            if not needs_login:
                return token.open()
            if not self._pin_asked:
                self.pin, self._pin_asked = self.pin_source(), True
            if self.pin is None:
                raise self._error(
                    f"the token needs a PIN: give pin-value= in the URI, set {PKCS11_PIN_ENV}, "
                    "or run on a terminal to be asked"
                )
            try:
                return token.open(user_pin=self.pin)
            except p11.UserAlreadyLoggedIn:
                # PKCS#11 login state belongs to the application, not the session: this
                # process logged in already (another key on the same token, or a module
                # that kept the login across a fork), so a new session shares that login
                # and the PIN given now is not checked again.
                return token.open()
        except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange) as e:
            raise self._error(f"wrong PIN ({type(e).__name__})") from e
        except p11.PinLocked as e:
            raise self._error("the PIN is locked (too many wrong PINs)") from e
        except p11.PinExpired as e:
            raise self._error("the PIN has expired") from e
        except p11.PKCS11Error as e:
            raise self._error(f"cannot log in: {_describe_p11(e)}") from e

    def _find_key(self, session: pkcs11.Session) -> Any:
        import pkcs11 as p11

        uri = self.uri
        kind = uri.get("type")
        if kind not in (None, "private"):
            raise self._error(
                f"type={kind} names no signing key (sign with type=private, or leave type out)"
            )
        attrs: dict[Any, Any] = {p11.Attribute.CLASS: p11.ObjectClass.PRIVATE_KEY}
        if uri.get("object") is not None:
            attrs[p11.Attribute.LABEL] = uri.get("object")
        if uri.key_id is not None:
            attrs[p11.Attribute.ID] = uri.key_id
        try:
            found = list(session.get_objects(attrs))
        except p11.PKCS11Error as e:
            raise self._error(f"cannot search for the key: {_describe_p11(e)}") from e
        what = uri.object or "a private key"
        if not found:
            raise self._error(f"no private key {what} on the token")
        if len(found) > 1:
            raise self._error(
                f"{len(found)} private keys match {what}; name one with object= or id="
            )
        key = found[0]
        try:
            key_type = key[p11.Attribute.KEY_TYPE]
        except p11.PKCS11Error as e:
            raise self._error(f"cannot read the key's type: {_describe_p11(e)}") from e
        if key_type == p11.KeyType.RSA:
            self.key_type = "rsa"
        elif key_type == p11.KeyType.EC:
            self.key_type = "ec"
        else:
            raise self._error(f"{what} is a {key_type.name} key; imaguard signs with RSA or ECDSA")
        return key

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        """The key's public half: a public key or certificate object with the same id or
        label, else (RSA) the modulus and exponent the private key object shows."""
        import pkcs11 as p11

        session, key = self._ensure()
        key_id = _attr(key, p11.Attribute.ID)
        label = _attr(key, p11.Attribute.LABEL)
        selectors = []
        if key_id:
            selectors.append({p11.Attribute.ID: key_id})
        if label:
            selectors.append({p11.Attribute.LABEL: label})
        for selector in selectors:
            for cls in (p11.ObjectClass.PUBLIC_KEY, p11.ObjectClass.CERTIFICATE):
                try:
                    objs = list(session.get_objects({p11.Attribute.CLASS: cls, **selector}))
                except p11.PKCS11Error:
                    continue
                for obj in objs:
                    public = self._public_from(obj, cls)
                    if public is not None:
                        return public
        if self.key_type == "rsa":
            modulus = _attr(key, p11.Attribute.MODULUS)
            exponent = _attr(key, p11.Attribute.PUBLIC_EXPONENT)
            if modulus and exponent:
                return rsa.RSAPublicNumbers(
                    int.from_bytes(exponent, "big"), int.from_bytes(modulus, "big")
                ).public_key()
        raise self._error(
            f"no public key or certificate object for {self.uri.object or 'the key'} "
            "(one with the same id or label is needed to know the public key)"
        )

    def _public_from(
        self, obj: Any, cls: Any
    ) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey | None:
        import pkcs11 as p11
        from cryptography import x509

        if cls == p11.ObjectClass.CERTIFICATE:
            der = _attr(obj, p11.Attribute.VALUE)
            if not der:
                return None
            try:
                public = x509.load_der_x509_certificate(der).public_key()
            except ValueError:
                return None
            return (
                public if isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey) else None
            )
        if self.key_type == "rsa":
            modulus = _attr(obj, p11.Attribute.MODULUS)
            exponent = _attr(obj, p11.Attribute.PUBLIC_EXPONENT)
            if not modulus or not exponent:
                return None
            return rsa.RSAPublicNumbers(
                int.from_bytes(exponent, "big"), int.from_bytes(modulus, "big")
            ).public_key()
        params = _attr(obj, p11.Attribute.EC_PARAMS)
        point = _attr(obj, p11.Attribute.EC_POINT)
        if not params or not point:
            return None
        curve = _CURVES_BY_PARAMS.get(bytes(params))
        if curve is None:
            raise self._error(
                f"the key is on an EC curve imaguard does not sign with (EC_PARAMS "
                f"{bytes(params).hex()}); it accepts P-256 and P-384"
            )
        raw = _unwrap_ec_point(bytes(point), curve.key_size)
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(curve, raw)
        except ValueError as e:
            raise self._error(f"the token's EC point does not decode ({e})") from e

    def _ensure(self) -> tuple[Any, Any]:
        if self._pid != os.getpid() or self._session is None:
            self.open()
        return self._session, self._key

    def sign(self, mechanism_name: str, data: bytes) -> bytes:
        import pkcs11 as p11

        _session, key = self._ensure()
        mechanism = getattr(p11.Mechanism, mechanism_name)
        kwargs: dict[str, Any] = {"mechanism": mechanism}
        if self._always_authenticate and self.pin is not None:
            kwargs["pin"] = self.pin
        try:
            return bytes(key.sign(data, **kwargs))
        except p11.PKCS11Error as e:
            raise self._error(
                f"the token refused to sign with {self.uri.object or 'the key'} "
                f"({mechanism_name}): {_describe_p11(e)}"
            ) from e


def _attr(obj: Any, attribute: Any) -> Any:
    import pkcs11 as p11

    try:
        return obj[attribute]
    except (p11.PKCS11Error, KeyError, NotImplementedError):
        return None


_CURVES_BY_PARAMS: dict[bytes, ec.EllipticCurve] = {
    bytes.fromhex("06082a8648ce3d030107"): ec.SECP256R1(),  # prime256v1, 1.2.840.10045.3.1.7
    bytes.fromhex("06052b81040022"): ec.SECP384R1(),  # secp384r1, 1.3.132.0.34
}


def _unwrap_ec_point(point: bytes, key_bits: int) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING holding the point (PKCS#11 v2.40 section 2.3.3);
    some modules give the bare point. Both are accepted."""
    size = 1 + 2 * ((key_bits + 7) // 8)
    if len(point) == size:
        return point
    if len(point) == size + 2 and point[0] == 0x04 and point[1] == size:
        return point[2:]
    return point


# -- DigestInfo (RFC 8017 section 9.2, note 1) --------------------------------------------


def _der(tag: int, content: bytes) -> bytes:
    if len(content) < 0x80:
        return bytes([tag, len(content)]) + content
    length = len(content).to_bytes((len(content).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


_HASH_OIDS = {
    "md5": "1.2.840.113549.2.5",
    "sha1": "1.3.14.3.2.26",
    "sha224": "2.16.840.1.101.3.4.2.4",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
    "sha3-256": "2.16.840.1.101.3.4.2.8",
    "sha3-384": "2.16.840.1.101.3.4.2.9",
    "sha3-512": "2.16.840.1.101.3.4.2.10",
    "sm3": "1.2.156.10197.1.401",
}


def digest_info(hash_name: str, digest: bytes) -> bytes:
    """The DER DigestInfo PKCS#1 v1.5 signs: ``SEQUENCE { SEQUENCE { oid, NULL }, OCTET
    STRING digest }``, with the NULL parameters OpenSSL writes for every algorithm here."""
    oid = _HASH_OIDS.get(hash_name)
    if oid is None:
        raise KeyLoadError(f"no PKCS#1 DigestInfo for hash algorithm {hash_name}")
    algorithm = _der(0x30, _oid(oid) + b"\x05\x00")
    return _der(0x30, algorithm + _der(0x04, digest))


def _hashed(
    data: Buffer, algorithm: utils.Prehashed | hashes.HashAlgorithm | utils.NoDigestInfo
) -> tuple[str, bytes]:
    """Hash ``data`` as ``cryptography``'s interfaces ask (certificates, CSRs)."""
    if isinstance(algorithm, hashes.HashAlgorithm):
        h = hashes.Hash(algorithm)
        h.update(data)
        return algorithm.name, h.finalize()
    # A Prehashed wrapper does not say which algorithm the digest is of (its DigestInfo is
    # unknown): imaguard signs digests through PrivateKey.sign_digest -> sign_prehashed.
    raise ValueError(
        "a token key signs a prehashed digest through PrivateKey.sign_digest, which names "
        "its algorithm"
    )


def _no_export(what: str) -> KeyLoadError:
    return KeyLoadError(f"{what}: the private key stays on the PKCS#11 token")


class _TokenRSAKey(rsa.RSAPrivateKey, PrehashedSigner):
    """An RSA key on a token, signing with CKM_RSA_PKCS over a DigestInfo built here."""

    def __init__(self, session: _TokenSession, public: rsa.RSAPublicKey) -> None:
        self._token = session
        self._public = public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def sign(
        self,
        data: Buffer,
        padding: AsymmetricPadding,
        algorithm: utils.Prehashed | hashes.HashAlgorithm | utils.NoDigestInfo,
    ) -> bytes:
        if not isinstance(padding, PKCS1v15):
            raise ValueError(f"a token RSA key signs with PKCS#1 v1.5 only, not {padding.name}")
        return self.sign_prehashed(*_hashed(data, algorithm))

    def sign_prehashed(self, hash_name: str, digest: bytes) -> bytes:
        return self._token.sign("RSA_PKCS", digest_info(hash_name, digest))

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> bytes:
        raise _no_export("decrypt")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        raise _no_export("private_numbers")

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        raise _no_export("private_bytes")

    def __copy__(self) -> _TokenRSAKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _TokenRSAKey:
        return self


class _TokenECKey(ec.EllipticCurvePrivateKey, PrehashedSigner):
    """An EC key on a token, signing with CKM_ECDSA over the digest (DER r,s out)."""

    def __init__(self, session: _TokenSession, public: ec.EllipticCurvePublicKey) -> None:
        self._token = session
        self._public = public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(self, data: Buffer, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise ValueError("a token EC key signs with ECDSA only")
        return self.sign_prehashed(*_hashed(data, signature_algorithm.algorithm))

    def sign_prehashed(self, hash_name: str, digest: bytes) -> bytes:
        raw = self._token.sign("ECDSA", digest)
        half = len(raw) // 2
        if len(raw) % 2 or half == 0:
            raise self._token._error(f"the token's ECDSA signature has an odd length ({len(raw)})")
        r = int.from_bytes(raw[:half], "big")
        s = int.from_bytes(raw[half:], "big")
        return encode_dss_signature(r, s)

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise _no_export("exchange")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise _no_export("private_numbers")

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        raise _no_export("private_bytes")

    def __copy__(self) -> _TokenECKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _TokenECKey:
        return self


# -- loading ------------------------------------------------------------------------------


def _resolve_pin(uri: Pkcs11Uri, pin: str | None, prompt: PinPrompt | None) -> str | None:
    """The PIN, from the first source that has one; the prompt is the last resort."""
    if pin is not None:
        return pin
    value = uri.get("pin-value")
    if value is not None:
        return value
    source = uri.get("pin-source")
    if source is not None:
        path = source[len("file:") :] if source.startswith("file:") else source
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().rstrip("\r\n")
        except OSError as e:
            raise TokenError(
                f"pin-source {path}: cannot read: {e.strerror or e}",
                module="",
                token=uri.token,
                object=uri.object,
            ) from e
    env = os.environ.get(PKCS11_PIN_ENV)
    if env:
        return env
    if prompt is not None:
        return prompt(uri.token)
    return None


def load_pkcs11_key(
    uri: str | Pkcs11Uri,
    *,
    module: str | None = None,
    pin: str | None = None,
    pin_prompt: PinPrompt | None = None,
) -> PrivateKey:
    """Open the token an RFC 7512 URI names and return its RSA or ECDSA key as a PrivateKey.

    The module is ``module`` (``--pkcs11-module``), else the URI's ``module-path``, else
    ``IMAGUARD_PKCS11_MODULE``, else p11-kit's proxy. The PIN is ``pin``, else the URI's
    ``pin-value`` (or ``pin-source`` file), else ``IMAGUARD_PKCS11_PIN``, else what
    ``pin_prompt`` answers; it is asked for only when the token requires a login. Every
    failure is a :class:`TokenError` naming the module, the token and the object.
    """
    parsed = uri if isinstance(uri, Pkcs11Uri) else Pkcs11Uri.parse(uri)
    path = _module_for(parsed, module)
    session = _TokenSession(path, parsed, lambda: _resolve_pin(parsed, pin, pin_prompt))
    session.open()
    public = _check_supported(session.public_key(), parsed.redacted())
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if isinstance(public, rsa.RSAPublicKey):
        if session.key_type != "rsa":
            raise session._error("the private key is EC but its public key object is RSA")
        key = _TokenRSAKey(session, public)
    else:
        if session.key_type != "ec":
            raise session._error("the private key is RSA but its public key object is EC")
        key = _TokenECKey(session, public)
    _log.debug(
        "loaded %s key %s from token %r (module %s)",
        session.key_type,
        parsed.object or "(the only key)",
        session.token_label,
        path,
    )
    return PrivateKey(key, None, parsed.redacted())


def load_signing_key(
    source: str | os.PathLike[str],
    password: str | bytes | None = None,
    *,
    pkcs11_module: str | None = None,
    pin: str | None = None,
    pin_prompt: PinPrompt | None = None,
    certificate: str | os.PathLike[str] | Certificate | None = None,
) -> PrivateKey:
    """A signing key from a file (PEM or DER) or a token (a ``pkcs11:`` URI).

    ``password`` is for an encrypted key file (:func:`load_private_key`); ``pkcs11_module``,
    ``pin`` and ``pin_prompt`` are for a token (:func:`load_pkcs11_key`). Giving one kind's
    options with the other kind of key is a :class:`~imaguard.UsageError`. ``certificate``
    (a path or a Certificate) makes the key sign with that certificate's key id.
    """
    text = os.fspath(source)
    if is_pkcs11_uri(text):
        if password is not None:
            raise UsageError(
                "a password is for an encrypted key file; a token's PIN comes from the URI's "
                f"pin-value, {PKCS11_PIN_ENV} or a prompt"
            )
        key = load_pkcs11_key(text, module=pkcs11_module, pin=pin, pin_prompt=pin_prompt)
    else:
        if pkcs11_module is not None:
            raise UsageError(f"--pkcs11-module is for a pkcs11: key, not the file {text}")
        key = load_private_key(text, password)
    if certificate is not None:
        from imaguard.crypto._keys import load_certificates

        cert = (
            certificate
            if isinstance(certificate, Certificate)
            else load_certificates(certificate)[0]
        )
        key = key.with_certificate(cert)
    return key
