// Package configs loads cometgate's configuration. It is the only package in
// the repository that imports viper; everything else receives the plain
// structs defined here, or values copied out of them: by cmd/cometgate, or
// here for the sections whose rules another package owns (SockJS
// endpoints and bridge targets are transports', the channel-name grammar
// is brokers'), so that Validate applies those rules to the very values
// the node will run with.
//
// # One YAML file, embedded defaults
//
// cometgate.yaml in this folder is the reference configuration: every key,
// with a comment giving its meaning, unit and allowed values. The same file
// is embedded in the binary and is the set of defaults, so running with no
// config file means running with exactly the values it shows, and the
// documentation cannot disagree with the defaults. A test checks that every
// field of [Config] appears in the file with a comment above it.
//
// [Load] builds a [Config] in three layers, later layers winning:
//
//  1. the embedded cometgate.yaml;
//  2. the operator's YAML file, if a path is given. Maps are merged key by
//     key; lists (allowed_origins, urls, channels, ...) are replaced whole;
//  3. environment variables: COMETGATE_ + the key path in upper case with
//     "." replaced by "_", e.g. COMETGATE_HTTP_LISTEN or
//     COMETGATE_BROKER_NATS_TLS_CA_FILE. List values are comma-separated.
//     The channels list cannot be set from the environment.
//
// The environment is passed in by the caller ([os.Environ] format) rather
// than read from the process, so tests are hermetic.
//
// # Why unknown keys fail
//
// A misspelt key ("http.lisen", COMETGATE_HTTP_LISEN) that was silently
// ignored would leave the default in force — often the permissive or
// loopback-only one — and the operator would not find out until production
// behaves unexpectedly. So an unknown key in the file, an unknown COMETGATE_
// variable, a value of the wrong type (a number where a duration string is
// expected, "yes" for a boolean) and a value outside its rules are all
// start-up errors that name the key. [Config.Validate] holds the value rules,
// one step per section, and can be called on a Config built in code.
//
// # How viper is used
//
// viper provides the layering (defaults, merged file, overrides) and the
// decoding into structs. The file is parsed and type-checked against the
// struct before it reaches viper, because viper lower-cases keys, silently
// skips a scalar merged over a section, and does not see keys inside list
// items; environment variables are matched against the known keys here
// rather than with viper's AutomaticEnv, which reads the process
// environment and cannot report unknown variables.
package configs
