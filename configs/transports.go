package configs

import (
	"net/netip"

	"github.com/cometgate/cometgate/transports"
)

// The sections below configure the transports package, which owns their
// rules: Validate checks them with transports' validators, and
// cmd/cometgate serves what these functions return, so both see the same
// values.

// SockJSEndpoints returns the sockjs section as transports takes it.
func (c *Config) SockJSEndpoints() []transports.SockJSEndpoint {
	var out []transports.SockJSEndpoint
	for _, sj := range c.SockJS {
		out = append(out, transports.SockJSEndpoint{
			Prefix: sj.Prefix, Mode: sj.Mode, Target: sj.Target,
			Websocket: sj.Websocket, CookieNeeded: sj.CookieNeeded,
			ResponseLimit: sj.ResponseLimit, HeartbeatDelay: sj.HeartbeatDelay,
			DisconnectDelay: sj.DisconnectDelay, ClientURL: sj.ClientURL,
			ClientIntegrity: sj.ClientIntegrity, CloseCode: sj.CloseCode, CloseReason: sj.CloseReason,
		})
	}
	return out
}

// BridgeTargets returns bridge.targets as transports takes them. Call it
// on a Config that passed Validate: it panics on an allow_networks entry
// that is not a CIDR prefix.
func (c *Config) BridgeTargets() []transports.BridgeTarget {
	var out []transports.BridgeTarget
	for _, t := range c.Bridge.Targets {
		bt := transports.BridgeTarget{Name: t.Name, Address: t.Address, MaxConnections: t.MaxConnections,
			RequireGrant: t.Access == PermissionToken, MaxMessageBytes: t.MaxMessageBytes, Subprotocols: t.Subprotocols}
		for _, n := range t.AllowNetworks {
			bt.AllowNetworks = append(bt.AllowNetworks, netip.MustParsePrefix(n))
		}
		out = append(out, bt)
	}
	return out
}
