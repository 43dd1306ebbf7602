package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/cometgate/cometgate/configs"
)

// publish sends one message through a running node's HTTP API, so it works
// with every broker kind, including the embedded one that has no TCP port.
func publish(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("publish", "cometgate publish [--url URL] [--key KEY] [--text] CHANNEL DATA")
	url := fs.String("url", "", "base URL of a running node (default: from http.listen of the configuration)")
	key := fs.String("key", "", "API key (default: $COMETGATE_PUBLISH_KEY; loopback needs none by default)")
	text := fs.Bool("text", false, "send DATA as text even if it is valid JSON")
	id := fs.String("id", "", "message id: publishing again with the same id (a retry) delivers the message once")
	configPath := fs.String("config", "", "configuration file to read http.listen from")
	if err := parseFlagsArgs(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return errUsage
	}
	channel, data := fs.Arg(0), fs.Arg(1)
	body := map[string]any{"channel": channel}
	if *id != "" {
		body["id"] = *id
	}
	if !*text && json.Valid([]byte(data)) {
		body["data"] = json.RawMessage(data)
	} else {
		body["text"] = data
	}
	if err := postAPI(ctx, environ, *url, *key, *configPath, "/api/publish", body); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	fmt.Fprintf(stdout, "published to %s\n", channel)
	return nil
}

// revoke ends a principal's sessions on every node, and has the nodes
// refuse the tokens it holds, through a running node's API (POST
// /api/revoke).
func revoke(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("revoke", "cometgate revoke [--url URL] [--key KEY] [--reason TEXT] SUBJECT")
	url := fs.String("url", "", "base URL of a running node (default: from http.listen of the configuration)")
	key := fs.String("key", "", "API key (default: $COMETGATE_PUBLISH_KEY; loopback needs none by default)")
	reason := fs.String("reason", "", "what the sessions' clients are told (at most 200 bytes)")
	configPath := fs.String("config", "", "configuration file to read http.listen from")
	if err := parseFlagsArgs(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() != 1 || fs.Arg(0) == "" {
		fs.Usage()
		return errUsage
	}
	body := map[string]any{"sub": fs.Arg(0), "reason": *reason}
	if err := postAPI(ctx, environ, *url, *key, *configPath, "/api/revoke", body); err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	fmt.Fprintf(stdout, "revoked %s\n", fs.Arg(0))
	return nil
}

// postAPI posts body as JSON to path of a node's API: at url, or the
// http.listen of the configuration at configPath; with the API key, or
// $COMETGATE_PUBLISH_KEY.
func postAPI(ctx context.Context, environ []string, url, key, configPath, path string, body any) error {
	if url == "" {
		cfg, err := configs.Load(configPath, withoutPublishKey(environ))
		if err != nil {
			return err
		}
		url = "http://" + cfg.HTTP.Listen
	}
	if key == "" {
		key = lookupEnv(environ, "COMETGATE_PUBLISH_KEY")
	}
	payload, _ := json.Marshal(body)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(url, "/")+path, bytes.NewReader(payload))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(out)))
	}
	return nil
}

// withoutPublishKey drops the CLI's own variable, which is not a
// configuration key.
func withoutPublishKey(environ []string) []string {
	out := environ[:0:0]
	for _, kv := range environ {
		if !strings.HasPrefix(kv, "COMETGATE_PUBLISH_KEY=") {
			out = append(out, kv)
		}
	}
	return out
}

func lookupEnv(environ []string, name string) string {
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			return v
		}
	}
	return ""
}

func printConfig(w io.Writer) error {
	_, err := w.Write(configs.Reference())
	return err
}
