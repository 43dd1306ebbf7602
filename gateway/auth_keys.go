package gateway

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"

	"github.com/golang-jwt/jwt/v5"
)

// Verification keys: what a token may be signed with. A key's type fixes
// the algorithms it verifies, so a token cannot choose how its key is
// used (algorithm confusion: an RSA public key used as an HMAC secret, or
// "alg":"none").

// VerificationKey is one key tokens may be signed with: exactly one of
// HMACSecret, PublicKeyPEM and PublicKey.
type VerificationKey struct {
	// ID is the "kid" of the tokens this key verifies; "" only for a
	// verifier's single key.
	ID string
	// HMACSecret verifies HS256, HS384 and HS512. At least 32 bytes.
	HMACSecret []byte
	// PublicKeyPEM is an RSA, ECDSA or Ed25519 public key ("PUBLIC KEY"
	// PEM block).
	PublicKeyPEM []byte
	// PublicKey is such a key, parsed already (*rsa.PublicKey,
	// *ecdsa.PublicKey, ed25519.PublicKey): a JWKS's keys.
	PublicKey crypto.PublicKey
	// Algorithm, when set, narrows the key to one algorithm of its type
	// ("RS256"); "" accepts each of the type's (an ECDSA key's is fixed by
	// its curve in any case).
	Algorithm string
}

// allAlgorithms are the algorithms some key type verifies.
var allAlgorithms = []string{"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// verifyKey is a VerificationKey ready for use.
type verifyKey struct {
	id   string
	key  any      // []byte, *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey
	algs []string // what it verifies
}

// parse checks k and returns it ready for use.
func (k VerificationKey) parse() (verifyKey, error) {
	set := 0
	for _, b := range []bool{len(k.HMACSecret) > 0, len(k.PublicKeyPEM) > 0, k.PublicKey != nil} {
		if b {
			set++
		}
	}
	if set != 1 {
		return verifyKey{}, errors.New("a key is one HMAC secret or one public key")
	}
	vk := verifyKey{id: k.ID}
	pub := k.PublicKey
	switch {
	case len(k.HMACSecret) > 0:
		if len(k.HMACSecret) < 32 {
			return vk, fmt.Errorf("the HMAC secret must be at least 32 bytes, got %d", len(k.HMACSecret))
		}
		vk.key, vk.algs = k.HMACSecret, []string{"HS256", "HS384", "HS512"}
	case len(k.PublicKeyPEM) > 0:
		block, _ := pem.Decode(k.PublicKeyPEM)
		if block == nil {
			return vk, errors.New("the public key is not PEM")
		}
		var err error
		if pub, err = x509.ParsePKIXPublicKey(block.Bytes); err != nil {
			return vk, fmt.Errorf("the public key: %w", err)
		}
	}
	if vk.key == nil {
		vk.key = pub
		switch pk := pub.(type) {
		case *rsa.PublicKey:
			vk.algs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
		case *ecdsa.PublicKey:
			alg, err := curveAlgorithm(pk.Curve)
			if err != nil {
				return vk, err
			}
			vk.algs = []string{alg}
		case ed25519.PublicKey:
			vk.algs = []string{"EdDSA"}
		default:
			return vk, fmt.Errorf("unsupported public key type %T", pub)
		}
	}
	if k.Algorithm != "" {
		if !slices.Contains(vk.algs, k.Algorithm) {
			return vk, fmt.Errorf("algorithm %q does not go with the key (it verifies %v)", k.Algorithm, vk.algs)
		}
		vk.algs = []string{k.Algorithm}
	}
	return vk, nil
}

// curveAlgorithm is the one algorithm an ECDSA key of curve c verifies.
func curveAlgorithm(c elliptic.Curve) (string, error) {
	switch c {
	case elliptic.P256():
		return "ES256", nil
	case elliptic.P384():
		return "ES384", nil
	case elliptic.P521():
		return "ES512", nil
	}
	return "", fmt.Errorf("unsupported ECDSA curve %s", c.Params().Name)
}

// ErrUnknownKeyID is the error of a token whose "kid" names no key the
// verifier holds.
var ErrUnknownKeyID = errors.New(`no key has the token's "kid"`)

// keyFor is the parser's key function: the key the token names, checked
// against the token's algorithm.
func (v *TokenVerifier) keyFor(t *jwt.Token) (any, error) {
	k, err := v.pick(t)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(k.algs, t.Method.Alg()) {
		// Wraps the signature error, as a signature made with another
		// kind of key is one that does not verify.
		return nil, fmt.Errorf("%w: algorithm %s does not go with key %q (it verifies %v)", jwt.ErrTokenSignatureInvalid, t.Method.Alg(), k.id, k.algs)
	}
	return k.key, nil
}

// pick is the key token t names: among the configured keys and the
// JWKS's. A "kid" not held makes the JWKS fetch again (rate limited), as
// the provider may have rotated; when the JWKS has no usable keys the
// error says why.
func (v *TokenVerifier) pick(t *jwt.Token) (*verifyKey, error) {
	if v.jwks == nil {
		return pickKey(v.keys, t)
	}
	for fetched := false; ; fetched = true {
		remote, rerr := v.jwks.usable()
		k, err := pickKey(slices.Concat(v.keys, remote), t)
		if err == nil {
			return k, nil
		}
		if fetched || !(errors.Is(err, ErrUnknownKeyID) || rerr != nil) || !v.jwks.refetch() {
			if rerr != nil {
				return nil, rerr
			}
			return nil, err
		}
	}
}

// pickKey is the key of keys that token t names (see Verify).
func pickKey(keys []verifyKey, t *jwt.Token) (*verifyKey, error) {
	kid, hasKID := t.Header["kid"].(string)
	if len(keys) == 1 && keys[0].id == "" {
		return &keys[0], nil
	}
	if !hasKID || kid == "" {
		if len(keys) == 1 {
			return &keys[0], nil
		}
		return nil, fmt.Errorf(`the token has no "kid" and %d keys are configured`, len(keys))
	}
	for i := range keys {
		if keys[i].id == kid {
			return &keys[i], nil
		}
	}
	if len(kid) > 64 {
		kid = kid[:64] + "…"
	}
	return nil, fmt.Errorf("%w (%q)", ErrUnknownKeyID, kid)
}
