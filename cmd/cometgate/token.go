package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/cometgate/cometgate/brokers"
	"github.com/cometgate/cometgate/configs"
	"github.com/cometgate/cometgate/gateway"
)

// patternList is a repeatable flag whose values may also be
// comma-separated: --subscribe a.> --subscribe b,c.
type patternList []string

func (l *patternList) String() string { return strings.Join(*l, ",") }

func (l *patternList) Set(v string) error {
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

const tokenSynopsis = "cometgate token --sub SUBJECT [--subscribe PATTERNS] [--publish PATTERNS] [--tcp TARGETS] [--ttl 1h] [--kid ID] [--config FILE]"

// token prints a token signed with auth.hmac_secret, for trying out
// channels with the token permission and for tests. Applications sign
// their own tokens after their login; this is the same token.
func token(args, environ []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("token", tokenSynopsis)
	sub := fs.String("sub", "", "the token's subject: the user, as the application names it (required)")
	var subscribe, publish, tcp patternList
	fs.Var(&subscribe, "subscribe", "channel patterns the token may subscribe to (repeatable or comma-separated)")
	fs.Var(&publish, "publish", "channel patterns the token may publish on (repeatable or comma-separated)")
	fs.Var(&tcp, "tcp", "TCP bridge targets (by name) the token may open (repeatable or comma-separated)")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid")
	kid := fs.String("kid", "", "the auth.keys entry to sign with (its HMAC secret; the token's \"kid\"); needed when several keys have a secret")
	configPath := fs.String("config", "", "configuration file to read the auth section from")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if *sub == "" {
		fmt.Fprint(stderr, "cometgate token: --sub is required\n")
		fs.Usage()
		return errUsage
	}
	cfg, err := configs.Load(*configPath, withoutPublishKey(environ))
	if err != nil {
		return err
	}
	tok, err := signToken(cfg.Auth, *kid, gateway.Principal{Subject: *sub, Subscribe: subscribe, Publish: publish, TCP: tcp}, *ttl)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}

// signToken signs p's token for ttl with the configuration's secret
// (auth.hmac_secret, or the HMAC secret of auth.keys entry kid), issuer
// and audience: a token the node verifies.
func signToken(a configs.Auth, kid string, p gateway.Principal, ttl time.Duration) (string, error) {
	if a.Mode != configs.AuthJWT {
		return "", fmt.Errorf("token: auth.mode is %q: set auth.mode to jwt (and auth.hmac_secret) for the node to accept tokens", a.Mode)
	}
	if ttl <= 0 {
		return "", fmt.Errorf("token: --ttl must be greater than 0, got %s", ttl)
	}
	secret, err := signingSecret(a, kid)
	if err != nil {
		return "", err
	}
	for _, g := range [][]string{p.Subscribe, p.Publish} {
		for _, pattern := range g {
			if err := brokers.ValidatePattern(pattern); err != nil {
				return "", fmt.Errorf("token: pattern %q: %w", pattern, err)
			}
		}
	}
	return gateway.SignTokenKID([]byte(secret), kid, p, a.Issuer, a.Audience, ttl)
}

// signingSecret is the HMAC secret "cometgate token" signs with;
// kid names the auth.keys entry when the configuration lists keys.
func signingSecret(a configs.Auth, kid string) (string, error) {
	if a.HMACSecret != "" {
		if kid != "" {
			return "", errors.New("token: --kid names an auth.keys entry, and auth.hmac_secret is set instead")
		}
		return a.HMACSecret, nil
	}
	for _, k := range a.Keys {
		if k.ID == kid && k.HMACSecret != "" {
			return k.HMACSecret, nil
		}
	}
	if kid != "" {
		return "", fmt.Errorf("token: auth.keys has no entry %q with an hmac_secret", kid)
	}
	return "", errors.New("token: no HMAC secret: set auth.hmac_secret, or name an auth.keys entry with an hmac_secret with --kid (with public keys the application signs tokens with its private key)")
}
