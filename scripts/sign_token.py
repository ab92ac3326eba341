"""Signs tokens and makes keys for herald's identity tests, with PyJWT and cryptography: an implementation
independent of the `jsonwebtoken` crate herald verifies with. Run by crates/herald/tests/support/jwt.rs through
the interpreter scripts/install-python sets up.

  sign_token.py sign ALG KEY CLAIMS_JSON [HEADERS_JSON]   KEY: the HMAC secret, or a private key PEM file (RS256, ES256,
                                                   EdDSA); prints the token
  sign_token.py forge FILE CLAIMS_JSON             an HS256 token whose secret is FILE's bytes (a public key's
                                                   PEM: the confusion attack PyJWT itself refuses to sign)
  sign_token.py keys DIR                                  writes rsa/ec/ed private (NAME.key) and public (NAME.pem) keys
"""
import base64
import hashlib
import hmac
import json
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def sign(alg, key, claims, headers=None):
    if alg != "HS256":
        with open(key, "rb") as f:
            key = f.read()
    print(jwt.encode(json.loads(claims), key, algorithm=alg, headers=json.loads(headers) if headers else None))


def forge(path, claims):
    with open(path, "rb") as f:
        secret = f.read()
    part = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=")
    signing_input = part(b'{"alg":"HS256","typ":"JWT"}') + b"." + part(claims.encode())
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    print((signing_input + b"." + part(signature)).decode())


def keys(directory):
    made = {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
    }
    for name, private in made.items():
        with open(f"{directory}/{name}.key", "wb") as f:
            f.write(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
        with open(f"{directory}/{name}.pem", "wb") as f:
            f.write(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"sign": sign, "forge": forge, "keys": keys}[command](*args)
