package main

// Tests of the deployment recipes in configs/deploy: the config file, the
// systemd unit, the Dockerfile and the Kubernetes manifests are checked
// against what cometgate really accepts; the container recipe is built
// where an engine is present. nginx_test.go runs the nginx example.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/cometgate/cometgate/configs"
)

// deployDir is configs/deploy, seen from this package's folder.
const deployDir = "../../configs/deploy"

// The paths the recipes install the config file at, and the file in the
// repository that goes there.
const (
	installedConfig = "/etc/cometgate/cometgate.yaml"
	deployConfig    = deployDir + "/cometgate.yaml"
)

func readDeployFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDeployCommandStartsNode runs the command the recipes run (the
// systemd unit's ExecStart; TestDeployFiles checks the image and the
// manifests run the same) with the deploy config, and checks the node
// comes up ready with what that config promises.
func TestDeployCommandStartsNode(t *testing.T) {
	args := unitExecArgs(t, parseUnit(t, readDeployFile(t, "cometgate.service")))
	if args[0] != "serve" {
		t.Fatalf("ExecStart runs %q, want serve", args)
	}
	args = slices.Clone(args[1:])
	for i, a := range args {
		if a == installedConfig {
			args[i] = deployConfig
		}
	}
	// Only the listener (a free loopback port), the JetStream store and
	// the drain (5s) differ from what a deployed node runs with.
	n := startNodeArgs(t, args, "COMETGATE_BROKER_EMBEDDED_STORE_DIR="+t.TempDir())
	waitReady(t, n, true)
	// Behind a proxy on the same host everything is loopback: the deploy
	// config makes the publish API need a key all the same.
	if code, body := postPublish(t, n, `{"channel":"demo.x","data":1}`); code != http.StatusUnauthorized {
		t.Errorf("publish without a key from loopback: %d %s, want 401", code, body)
	}
	s := openSSE(t, n.url("/sse?ch=demo.x"))
	next(t, s.packets, "hello")
	if ok := next(t, s.packets, "ok"); ok["history"] != true {
		t.Errorf("demo channel without history under the deploy config: %v", ok)
	}
}

// TestDeployFiles checks the recipes in configs/deploy against what
// cometgate accepts, without a container engine, systemd or a cluster.
func TestDeployFiles(t *testing.T) {
	cfg, err := configs.Load(deployConfig, nil)
	if err != nil {
		t.Fatalf("%s: %v", deployConfig, err)
	}
	unit := parseUnit(t, readDeployFile(t, "cometgate.service"))
	command := unitExecArgs(t, unit)

	t.Run("systemd", func(t *testing.T) {
		svc := unit["Service"]
		want := map[string]string{"Restart": "on-failure", "NoNewPrivileges": "yes", "ProtectSystem": "strict"}
		for k, v := range want {
			if got := svc.last(k); got != v {
				t.Errorf("%s=%s, want %s", k, got, v)
			}
		}
		if u := svc.last("User"); (u == "" || u == "root" || u == "0") && svc.last("DynamicUser") != "yes" {
			t.Errorf("the unit runs as %q: want a dedicated user", u)
		}
		if n, err := strconv.Atoi(svc.last("LimitNOFILE")); err != nil || n < 65536 {
			t.Errorf("LimitNOFILE=%s, want at least 65536", svc.last("LimitNOFILE"))
		}
		if stop := systemdSeconds(t, svc.last("TimeoutStopSec")); stop <= cfg.HTTP.ShutdownTimeout {
			t.Errorf("TimeoutStopSec %v does not exceed the drain (http.shutdown_timeout %v)", stop, cfg.HTTP.ShutdownTimeout)
		}
		// ProtectSystem=strict leaves only the state directory writable:
		// the embedded broker's store must be it.
		if cfg.Broker.Kind == configs.BrokerEmbedded && cfg.Broker.Embedded.StoreDir != "" {
			if dir := "/var/lib/" + svc.last("StateDirectory"); dir != cfg.Broker.Embedded.StoreDir {
				t.Errorf("StateDirectory gives %s, but broker.embedded.store_dir is %s", dir, cfg.Broker.Embedded.StoreDir)
			}
		}
		verifyUnit(t)
	})

	t.Run("dockerfile", func(t *testing.T) {
		checkDockerfile(t, cfg, command)
	})

	t.Run("kubernetes", func(t *testing.T) {
		checkKubernetes(t, command)
	})

	t.Run("nginx", func(t *testing.T) {
		checkNginxDirectives(t)
	})
}

// unitFile is a parsed systemd unit: section → key → values in order.
type unitFile map[string]unitSection

type unitSection map[string][]string

func (s unitSection) last(key string) string {
	if v := s[key]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

func parseUnit(t *testing.T, data []byte) unitFile {
	t.Helper()
	u := unitFile{}
	var sec unitSection
	var cont string
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if cont != "" {
			line, cont = cont+" "+line, ""
		}
		if strings.HasSuffix(line, `\`) {
			cont = strings.TrimSuffix(line, `\`)
			continue
		}
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			sec = unitSection{}
			u[line[1:len(line)-1]] = sec
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || sec == nil {
				t.Fatalf("cometgate.service: bad line %q", line)
			}
			sec[strings.TrimSpace(k)] = append(sec[strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

// unitExecArgs is the unit's command line after the binary, which must
// be an absolute path to cometgate.
func unitExecArgs(t *testing.T, u unitFile) []string {
	t.Helper()
	f := strings.Fields(u["Service"].last("ExecStart"))
	if len(f) < 2 || !path.IsAbs(f[0]) || path.Base(f[0]) != "cometgate" {
		t.Fatalf("ExecStart=%s: want /path/to/cometgate serve ...", u["Service"].last("ExecStart"))
	}
	return f[1:]
}

// systemdSeconds parses a systemd time span of the forms the unit uses:
// seconds, or a Go-style duration such as "30s" or "1m30s".
func systemdSeconds(t *testing.T, v string) time.Duration {
	t.Helper()
	if n, err := strconv.Atoi(v); err == nil {
		return time.Duration(n) * time.Second
	}
	d, err := time.ParseDuration(strings.ReplaceAll(v, "min", "m"))
	if err != nil {
		t.Fatalf("time span %q: %v", v, err)
	}
	return d
}

// verifyUnit runs systemd-analyze verify on the unit, where it exists,
// with ExecStart pointing at an executable that exists (this test's
// binary): unknown keys or values systemd cannot parse fail the test.
func verifyUnit(t *testing.T) {
	t.Helper()
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: the unit is not verified by systemd")
		return
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data := readDeployFile(t, "cometgate.service")
	re := regexp.MustCompile(`(?m)^ExecStart=\S+`)
	data = re.ReplaceAll(data, []byte("ExecStart="+self))
	file := filepath.Join(t.TempDir(), "cometgate.service")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, analyze, "verify", "--man=no", file).CombinedOutput()
	var complaints []string
	for line := range strings.Lines(string(out)) {
		if strings.Contains(line, "cometgate.service") {
			complaints = append(complaints, strings.TrimSpace(line))
		}
	}
	if err != nil || len(complaints) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// dockerInstruction is one instruction of a Dockerfile, continuation
// lines joined.
type dockerInstruction struct {
	cmd, args string
}

func parseDockerfile(data []byte) []dockerInstruction {
	var out []dockerInstruction
	var cur string
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") || (line == "" && cur == "") {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			cur += strings.TrimSuffix(line, `\`) + " "
			continue
		}
		cur += line
		cmd, args, _ := strings.Cut(cur, " ")
		out = append(out, dockerInstruction{strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur = ""
	}
	return out
}

func checkDockerfile(t *testing.T, cfg *configs.Config, command []string) {
	ins := parseDockerfile(readDeployFile(t, "Dockerfile"))
	last := -1
	for i, in := range ins {
		if in.cmd == "FROM" {
			last = i
		}
	}
	if last < 1 {
		t.Fatal("Dockerfile: not a multi-stage build")
	}
	build, final := ins[:last], ins[last:]
	base := strings.Fields(final[0].args)[0]
	if base != "scratch" && !strings.Contains(base, "distroless/static") {
		t.Errorf("final stage FROM %s: want distroless/static or scratch", base)
	}

	// The Go version of the build stage is go.mod's.
	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	var static, builds bool
	for _, in := range build {
		switch in.cmd {
		case "ARG":
			if v, ok := strings.CutPrefix(in.args, "GO_VERSION="); ok && v != string(goVersion[1]) {
				t.Errorf("ARG GO_VERSION=%s, but go.mod says go %s", v, goVersion[1])
			}
		case "RUN":
			if strings.Contains(in.args, "go build") && strings.Contains(in.args, "./cmd/cometgate") {
				builds = true
				static = strings.Contains(in.args, "CGO_ENABLED=0")
			}
		case "COPY":
			// Sources in the build context exist.
			f := strings.Fields(in.args)
			for _, src := range f[:len(f)-1] {
				if _, err := os.Stat(filepath.Join("../..", src)); err != nil {
					t.Errorf("COPY %s: %v", in.args, err)
				}
			}
		}
	}
	if !builds || !static {
		t.Errorf("the build stage must go build ./cmd/cometgate with CGO_ENABLED=0 (found build %v, static %v)", builds, static)
	}

	var entry, cmd []string
	user := ""
	copies := map[string]string{} // destination → COPY arguments
	for _, in := range final[1:] {
		switch in.cmd {
		case "ENTRYPOINT", "CMD":
			var v []string
			if err := json.Unmarshal([]byte(in.args), &v); err != nil {
				t.Fatalf("%s %s: want the JSON form: %v", in.cmd, in.args, err)
			}
			if in.cmd == "ENTRYPOINT" {
				entry = v
			} else {
				cmd = v
			}
		case "USER":
			user = in.args
		case "COPY":
			f := strings.Fields(in.args)
			copies[f[len(f)-1]] = in.args
			if !strings.Contains(in.args, "--from=") {
				if _, err := os.Stat(filepath.Join("../..", f[len(f)-2])); err != nil {
					t.Errorf("COPY %s: %v", in.args, err)
				}
			}
		}
	}
	if u, _, _ := strings.Cut(user, ":"); u == "" || u == "root" || u == "0" {
		t.Errorf("final stage USER %q: want a non-root user", user)
	}
	full := append(slices.Clone(entry), cmd...)
	if len(full) == 0 || copies[full[0]] == "" {
		t.Fatalf("ENTRYPOINT %q CMD %q: the binary is not copied there", entry, cmd)
	}
	if !slices.Equal(full[1:], command) {
		t.Errorf("the image runs %q, the systemd unit %q: want the same", full[1:], command)
	}
	if c := copies[installedConfig]; !strings.Contains(c, "configs/deploy/cometgate.yaml") {
		t.Errorf("the image does not carry configs/deploy/cometgate.yaml at %s (COPY %q)", installedConfig, c)
	}
	if dir := cfg.Broker.Embedded.StoreDir; dir != "" && !strings.Contains(copies[dir], "--chown=") {
		t.Errorf("broker.embedded.store_dir %s is not created for the image's user (COPY %q)", dir, copies[dir])
	}
}

// Kubernetes objects: the fields the checks read.
type k8sObject struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		ServiceName     string           `yaml:"serviceName"`
		Selector        map[string]any   `yaml:"selector"`
		SessionAffinity string           `yaml:"sessionAffinity"`
		Ports           []k8sServicePort `yaml:"ports"`
		Template        k8sPodTemplate   `yaml:"template"`
		VolumeClaims    []k8sObject      `yaml:"volumeClaimTemplates"`
	} `yaml:"spec"`
}

type k8sServicePort struct {
	Name       string `yaml:"name"`
	Port       int    `yaml:"port"`
	TargetPort any    `yaml:"targetPort"`
}

type k8sPodTemplate struct {
	Metadata struct {
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec struct {
		TerminationGracePeriodSeconds *int           `yaml:"terminationGracePeriodSeconds"`
		Containers                    []k8sContainer `yaml:"containers"`
		Volumes                       []struct {
			Name      string `yaml:"name"`
			ConfigMap *struct {
				Name string `yaml:"name"`
			} `yaml:"configMap"`
		} `yaml:"volumes"`
	} `yaml:"spec"`
}

type k8sContainer struct {
	Name    string   `yaml:"name"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Ports   []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	Env []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			FieldRef *struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
			SecretKeyRef *struct {
				Name string `yaml:"name"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
	LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
	Lifecycle      *struct {
		PreStop *struct {
			Sleep *struct {
				Seconds int `yaml:"seconds"`
			} `yaml:"sleep"`
		} `yaml:"preStop"`
	} `yaml:"lifecycle"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

type k8sProbe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

// kustomization is configs/deploy/kustomization.yaml.
type kustomization struct {
	Resources          []string `yaml:"resources"`
	ConfigMapGenerator []struct {
		Name  string   `yaml:"name"`
		Files []string `yaml:"files"`
	} `yaml:"configMapGenerator"`
}

func decodeK8s(t *testing.T, src string, data []byte) []k8sObject {
	t.Helper()
	var out []k8sObject
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var o k8sObject
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if o.Kind == "" {
			t.Fatalf("%s: a document without kind", src)
		}
		out = append(out, o)
	}
}

// k8sObjects are the objects "kubectl apply -k configs/deploy" creates:
// rendered by kubectl where it is installed, otherwise read from the
// kustomization's resources and generator.
func k8sObjects(t *testing.T) []k8sObject {
	t.Helper()
	var k kustomization
	if err := yaml.Unmarshal(readDeployFile(t, "kustomization.yaml"), &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	var objs []k8sObject
	for _, r := range k.Resources {
		objs = append(objs, decodeK8s(t, r, readDeployFile(t, r))...)
	}
	for _, g := range k.ConfigMapGenerator {
		cm := k8sObject{Kind: "ConfigMap", Data: map[string]string{}}
		cm.Metadata.Name = g.Name
		for _, f := range g.Files {
			cm.Data[path.Base(f)] = string(readDeployFile(t, f))
		}
		objs = append(objs, cm)
	}
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Log("kubectl not installed: kustomization.yaml is read by this test, not rendered by kustomize")
		return objs
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	c := exec.CommandContext(ctx, kubectl, "kustomize", deployDir)
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", deployDir, err, stderr.Bytes())
	}
	rendered := decodeK8s(t, "kubectl kustomize", out)
	if len(rendered) != len(objs) {
		t.Fatalf("kustomize renders %d objects, the files hold %d", len(rendered), len(objs))
	}
	return rendered
}

func findK8s(t *testing.T, objs []k8sObject, kind, name string) *k8sObject {
	t.Helper()
	for i := range objs {
		if objs[i].Kind == kind && objs[i].Metadata.Name == name {
			return &objs[i]
		}
	}
	t.Fatalf("no %s %q in the manifests", kind, name)
	return nil
}

// k8sEnv resolves a container's environment as the kubelet would, with
// made-up values for fields and secrets.
func k8sEnv(t *testing.T, c k8sContainer) []string {
	t.Helper()
	vars := map[string]string{}
	var env []string
	ref := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	for _, e := range c.Env {
		v := e.Value
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			v = map[string]string{"status.podIP": "10.1.2.3", "metadata.name": "cometgate-0"}[e.ValueFrom.FieldRef.FieldPath]
			if v == "" {
				t.Fatalf("env %s: field %s not simulated", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			v = "secret-from-" + e.ValueFrom.SecretKeyRef.Name
		default:
			v = ref.ReplaceAllStringFunc(v, func(m string) string {
				if x, ok := vars[m[2:len(m)-1]]; ok {
					return x
				}
				return m
			})
		}
		vars[e.Name] = v
		env = append(env, e.Name+"="+v)
	}
	return env
}

// portNumber resolves a probe's or service's port (a number or a
// container port's name).
func portNumber(t *testing.T, c k8sContainer, port any) int {
	t.Helper()
	switch p := port.(type) {
	case int:
		return p
	case string:
		for _, cp := range c.Ports {
			if cp.Name == p {
				return cp.ContainerPort
			}
		}
	}
	t.Fatalf("port %v is not one of container %s's", port, c.Name)
	return 0
}

func checkKubernetes(t *testing.T, command []string) {
	objs := k8sObjects(t)
	dep := findK8s(t, objs, "Deployment", "cometgate")
	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("cometgate pods have %d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if len(c.Command) > 0 || !slices.Equal(c.Args, command) {
		t.Errorf("the pods run command %q args %q, the systemd unit %q: want the image's entrypoint with the same arguments", c.Command, c.Args, command)
	}

	// The config file the command names, from the ConfigMap mounted at
	// its folder, with the pod's environment over it: valid.
	i := slices.Index(c.Args, "--config")
	if i < 0 || i+1 == len(c.Args) {
		t.Fatalf("args %q: no --config", c.Args)
	}
	file := c.Args[i+1]
	var data string
	for _, m := range c.VolumeMounts {
		if m.MountPath != path.Dir(file) {
			continue
		}
		for _, v := range pod.Volumes {
			if v.Name == m.Name && v.ConfigMap != nil {
				data = findK8s(t, objs, "ConfigMap", v.ConfigMap.Name).Data[path.Base(file)]
			}
		}
	}
	if data == "" {
		t.Fatalf("no ConfigMap with %s mounted at %s", path.Base(file), path.Dir(file))
	}
	cfgFile := filepath.Join(t.TempDir(), "cometgate.yaml")
	if err := os.WriteFile(cfgFile, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := configs.Load(cfgFile, k8sEnv(t, c))
	if err != nil {
		t.Fatalf("the pods' config and environment do not load: %v", err)
	}

	_, port, _ := strings.Cut(cfg.HTTP.Listen, ":")
	for name, p := range map[string]*k8sProbe{"/readyz": c.ReadinessProbe, "/healthz": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != name {
			t.Errorf("want a probe on %s", name)
			continue
		}
		if got := portNumber(t, c, p.HTTPGet.Port); strconv.Itoa(got) != port {
			t.Errorf("probe %s on port %d, but http.listen is %s", name, got, cfg.HTTP.Listen)
		}
	}

	// Termination: the preStop sleep, then the drain, within the grace period.
	var sleep time.Duration
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
		t.Error("no preStop sleep: endpoints may still route to a draining node")
	} else {
		sleep = time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	}
	grace := 30 * time.Second // the Kubernetes default
	if g := pod.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	if grace <= sleep+cfg.HTTP.ShutdownTimeout {
		t.Errorf("terminationGracePeriodSeconds %v does not exceed the preStop sleep %v plus the drain %v", grace, sleep, cfg.HTTP.ShutdownTimeout)
	}

	// Forwarding between the nodes is on: each pod advertises its own address.
	adv, err := url.Parse(cfg.Node.AdvertiseURL)
	if err != nil || adv.Hostname() != "10.1.2.3" || adv.Port() != port {
		t.Errorf("node.advertise_url %q: want the pod's IP and port %s", cfg.Node.AdvertiseURL, port)
	}

	svc := findK8s(t, objs, "Service", "cometgate")
	if svc.Spec.SessionAffinity == "ClientIP" {
		t.Error("the cometgate Service is sticky: cometgate needs no affinity")
	}
	for _, sp := range svc.Spec.Ports {
		if got := portNumber(t, c, sp.TargetPort); strconv.Itoa(got) != port {
			t.Errorf("Service port %s targets %d, but http.listen is %s", sp.Name, got, cfg.HTTP.Listen)
		}
	}
	selects(t, svc, dep)

	// The broker: a NATS Service in front of a StatefulSet running
	// JetStream on a persistent volume.
	if cfg.Broker.Kind != configs.BrokerNATS || len(cfg.Broker.NATS.URLs) == 0 {
		t.Fatalf("the pods use broker %s, want nats", cfg.Broker.Kind)
	}
	nu, err := url.Parse(cfg.Broker.NATS.URLs[0])
	if err != nil {
		t.Fatal(err)
	}
	natsSvc := findK8s(t, objs, "Service", nu.Hostname())
	sts := findK8s(t, objs, "StatefulSet", nu.Hostname())
	selects(t, natsSvc, sts)
	if sts.Spec.ServiceName != natsSvc.Metadata.Name {
		t.Errorf("StatefulSet serviceName %q, want %q", sts.Spec.ServiceName, natsSvc.Metadata.Name)
	}
	servesPort := false
	for _, sp := range natsSvc.Spec.Ports {
		servesPort = servesPort || strconv.Itoa(sp.Port) == nu.Port()
	}
	if !servesPort {
		t.Errorf("Service %s does not serve port %s", natsSvc.Metadata.Name, nu.Port())
	}
	nc := sts.Spec.Template.Spec.Containers[0]
	if !slices.Contains(nc.Args, "--jetstream") && !slices.Contains(nc.Args, "-js") {
		t.Errorf("nats runs %q: no --jetstream", nc.Args)
	}
	if len(sts.Spec.VolumeClaims) == 0 {
		t.Error("nats keeps its streams on no persistent volume")
	}
}

// selects checks that a Service's selector matches a workload's pods.
func selects(t *testing.T, svc, workload *k8sObject) {
	t.Helper()
	labels := workload.Spec.Template.Metadata.Labels
	if len(svc.Spec.Selector) == 0 {
		t.Errorf("Service %s selects nothing", svc.Metadata.Name)
	}
	for k, v := range svc.Spec.Selector {
		if labels[k] != v {
			t.Errorf("Service %s selects %s=%v, which %s's pods do not carry", svc.Metadata.Name, k, v, workload.Metadata.Name)
		}
	}
}

// TestDeployContainerBuild builds configs/deploy/Dockerfile and runs the
// image, where a container engine that can build is present.
func TestDeployContainerBuild(t *testing.T) {
	engine, why := containerEngine()
	if engine == "" {
		t.Skip("container recipe not built: " + why)
	}
	tag := fmt.Sprintf("cometgate-test:%d", rand.Uint32())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, engine, "build", "-f", "configs/deploy/Dockerfile", "-t", tag, ".")
	build.Dir = "../.."
	out, err := build.CombinedOutput()
	t.Cleanup(func() { _ = exec.Command(engine, "image", "rm", "-f", tag).Run() })
	if err != nil {
		t.Fatalf("%s build: %v\n%s", engine, err, out)
	}
	// The static binary runs in the image, as its unprivileged user.
	out, err = exec.CommandContext(ctx, engine, "run", "--rm", tag, "help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "serve") {
		t.Fatalf("%s run %s help: %v\n%s", engine, tag, err, out)
	}
	out, err = exec.CommandContext(ctx, engine, "image", "inspect", "--format", "{{.Config.User}} {{.Size}}", tag).CombinedOutput()
	if err != nil {
		t.Fatalf("%s image inspect: %v\n%s", engine, err, out)
	}
	t.Logf("image %s: user and size %s", tag, bytes.TrimSpace(out))
}

// containerEngine is the first of docker and podman that can build here,
// or "" and why none can.
func containerEngine() (string, string) {
	var why []string
	for _, e := range []string{"docker", "podman"} {
		bin, err := exec.LookPath(e)
		if err != nil {
			why = append(why, e+" not installed")
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, bin, "info").CombinedOutput()
		cancel()
		if err == nil {
			return bin, ""
		}
		msg := strings.TrimSpace(string(out))
		for line := range strings.Lines(msg) { // the engine's complaint, on one line
			if l := strings.TrimSpace(line); strings.Contains(strings.ToLower(l), "cannot") || strings.Contains(strings.ToLower(l), "error") {
				msg = l
				break
			}
		}
		why = append(why, fmt.Sprintf("%s info failed (%v: %s)", e, err, msg))
	}
	return "", strings.Join(why, "; ")
}
