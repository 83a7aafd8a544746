"""Independent check of the X.509-SVID rules with `cryptography` (not identityd's code).

usage: check_x509_svid.py SVID_PEM BUNDLE_PEM
Prints "OK <spiffe id>" and exits 0, or prints the failed rule and exits 1.
"""
import datetime
import sys
from urllib.parse import urlparse

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID


def fail(msg):
    print(f"FAIL {msg}")
    sys.exit(1)


def ext(cert, cls):
    try:
        return cert.extensions.get_extension_for_class(cls)
    except x509.ExtensionNotFound:
        return None


def uri_sans(cert):
    san = ext(cert, x509.SubjectAlternativeName)
    return [] if san is None else san.value.get_values_for_type(x509.UniformResourceIdentifier)


def check_time(cert, what):
    now = datetime.datetime.now(datetime.timezone.utc)
    if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
        fail(f"{what}: not within validity at {now}")


def check_signing(cert, what, td):
    bc = ext(cert, x509.BasicConstraints)
    if bc is None or not bc.value.ca:
        fail(f"{what}: signing certificate must have cA=true")
    ku = ext(cert, x509.KeyUsage)
    if ku is None or not ku.value.key_cert_sign:
        fail(f"{what}: signing certificate must have keyCertSign")
    for u in uri_sans(cert):
        p = urlparse(u)
        if p.scheme != "spiffe" or p.netloc != td or p.path not in ("",):
            fail(f"{what}: signing certificate SPIFFE ID {u} must be spiffe://{td} without a path")
    if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey) or cert.public_key().curve.name != "secp256r1":
        fail(f"{what}: key must be ECDSA P-256")
    check_time(cert, what)


def main():
    chain = x509.load_pem_x509_certificates(open(sys.argv[1], "rb").read())
    roots = x509.load_pem_x509_certificates(open(sys.argv[2], "rb").read())
    leaf = chain[0]

    uris = uri_sans(leaf)
    if len(uris) != 1:
        fail(f"leaf: exactly one URI SAN required, found {len(uris)}")
    sid = urlparse(uris[0])
    if sid.scheme != "spiffe" or not sid.netloc or sid.query or sid.fragment or sid.port or "@" in sid.netloc:
        fail(f"leaf: {uris[0]} is not a SPIFFE ID")
    if sid.path in ("", "/"):
        fail("leaf: SPIFFE ID must have a path")
    td = sid.netloc

    bc = ext(leaf, x509.BasicConstraints)
    if bc is None or bc.value.ca:
        fail("leaf: basicConstraints must be present with cA=false")
    ku = ext(leaf, x509.KeyUsage)
    if ku is None:
        fail("leaf: keyUsage missing")
    if not ku.critical:
        fail("leaf: keyUsage must be critical")
    if not ku.value.digital_signature:
        fail("leaf: keyUsage must include digitalSignature")
    if ku.value.key_cert_sign or ku.value.crl_sign:
        fail("leaf: keyUsage must not include keyCertSign or cRLSign")
    eku = ext(leaf, x509.ExtendedKeyUsage)
    if eku is None or ExtendedKeyUsageOID.SERVER_AUTH not in eku.value or ExtendedKeyUsageOID.CLIENT_AUTH not in eku.value:
        fail("leaf: extendedKeyUsage must include serverAuth and clientAuth")
    if not isinstance(leaf.public_key(), ec.EllipticCurvePublicKey) or leaf.public_key().curve.name != "secp256r1":
        fail("leaf: key must be ECDSA P-256")
    check_time(leaf, "leaf")

    for i, c in enumerate(chain[1:], 1):
        check_signing(c, f"chain[{i}]", td)
    for i, r in enumerate(roots):
        check_signing(r, f"root[{i}]", td)

    # Each certificate is directly issued by the next; the top by a bundle root.
    for child, parent in zip(chain, chain[1:]):
        child.verify_directly_issued_by(parent)
    top = chain[-1]
    for r in roots:
        try:
            top.verify_directly_issued_by(r)
            break
        except Exception:
            continue
    else:
        fail("chain does not lead to a bundle root")
    print(f"OK {uris[0]}")


main()
