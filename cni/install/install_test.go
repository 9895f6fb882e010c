package install

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var pluginConf = map[string]any{"socket": "/var/run/strait/cni.sock", "failOpen": false}

// setup copies a testdata config into a fresh conf dir.
func setup(t *testing.T, files ...string) Config {
	t.Helper()
	conf, bin := t.TempDir(), t.TempDir()
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join("testdata", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(conf, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	src := filepath.Join(t.TempDir(), "strait-cni")
	if err := os.WriteFile(src, []byte("#!/bin/true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return Config{BinDir: bin, ConfDir: conf, Binary: src, Plugin: pluginConf}
}

func load(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

func types(m map[string]any) []string {
	var out []string
	for _, p := range m["plugins"].([]any) {
		out = append(out, p.(map[string]any)["type"].(string))
	}
	return out
}

// The common primary CNIs' shapes: the plugin lands last, everything
// else is kept, a second install changes nothing, uninstall restores the
// original chain.
func TestInstallChainsIntoCommonCNIs(t *testing.T) {
	for _, c := range []struct {
		file string
		want []string
	}{
		{"10-bridge.conflist", []string{"bridge", "portmap", PluginType}},
		{"10-flannel.conflist", []string{"flannel", "portmap", PluginType}},
		{"10-calico.conflist", []string{"calico", "portmap", "bandwidth", PluginType}},
	} {
		t.Run(c.file, func(t *testing.T) {
			cfg := setup(t, c.file)
			path := filepath.Join(cfg.ConfDir, c.file)
			orig := load(t, path)
			changed, err := Install(cfg)
			if err != nil || !changed {
				t.Fatalf("Install = %v, %v", changed, err)
			}
			got := load(t, path)
			if !reflect.DeepEqual(types(got), c.want) {
				t.Fatalf("chain = %v, want %v", types(got), c.want)
			}
			last := got["plugins"].([]any)[len(c.want)-1].(map[string]any)
			if last["socket"] != "/var/run/strait/cni.sock" || last["failOpen"] != false {
				t.Errorf("plugin config = %v", last)
			}
			if got["name"] != orig["name"] || got["cniVersion"] != orig["cniVersion"] ||
				!reflect.DeepEqual(got["plugins"].([]any)[0], orig["plugins"].([]any)[0]) {
				t.Errorf("the primary plugin's config changed:\n%v\n%v", orig, got)
			}
			if st, err := os.Stat(filepath.Join(cfg.BinDir, PluginType)); err != nil || st.Mode().Perm() != 0o755 {
				t.Fatalf("binary: %v %v", st, err)
			}
			if changed, err := Install(cfg); err != nil || changed {
				t.Errorf("second Install = %v, %v; want no change", changed, err)
			}
			if err := Uninstall(cfg); err != nil {
				t.Fatal(err)
			}
			if got := load(t, path); !reflect.DeepEqual(got, orig) {
				t.Errorf("after uninstall:\n%v\nwant the original\n%v", got, orig)
			}
			if _, err := os.Stat(filepath.Join(cfg.BinDir, PluginType)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("binary left after uninstall: %v", err)
			}
			left, _ := os.ReadDir(cfg.ConfDir)
			if len(left) != 1 {
				t.Errorf("conf dir holds %d files, want 1 (no temporary files)", len(left))
			}
		})
	}
}

// A single-plugin .conf (cilium's shape) becomes a .conflist of the same
// name, so the kubelet keeps choosing the same network, and the first file
// by name is the primary.
func TestInstallConvertsConf(t *testing.T) {
	cfg := setup(t, "05-cilium.conf", "10-bridge.conflist")
	if _, err := Install(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(cfg.ConfDir, "05-cilium.conf")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the .conf is still there: %v", err)
	}
	got := load(t, filepath.Join(cfg.ConfDir, "05-cilium.conflist"))
	if !reflect.DeepEqual(types(got), []string{"cilium-cni", PluginType}) || got["name"] != "cilium" {
		t.Fatalf("converted = %v", got)
	}
	if p := got["plugins"].([]any)[0].(map[string]any); p["log-file"] != "/var/run/cilium/cilium-cni.log" || p["cniVersion"] != nil {
		t.Errorf("cilium plugin = %v", p)
	}
	if b := load(t, filepath.Join(cfg.ConfDir, "10-bridge.conflist")); len(types(b)) != 2 {
		t.Errorf("a non-primary config was touched: %v", types(b))
	}
}

// The primary CNI rewrites its file (as flannel and calico do on
// restart): the watcher puts the plugin back.
func TestWatchReinserts(t *testing.T) {
	cfg := setup(t, "10-calico.conflist")
	ctx, cancel := context.WithCancel(context.Background())
	changes := make(chan string, 8)
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watch(ctx, cfg, 20*time.Millisecond, func(p string, err error) {
			if err == nil {
				changes <- p
			}
		})
	}()
	defer func() { cancel(); <-done }()
	wait := func() {
		t.Helper()
		select {
		case <-changes:
		case <-time.After(5 * time.Second):
			t.Fatal("the watcher did not chain the plugin")
		}
	}
	wait()
	// The primary CNI rewrites its file in place, not atomically: the
	// watcher may read it empty or half-written, and must carry on.
	orig, _ := os.ReadFile(filepath.Join("testdata", "10-calico.conflist"))
	path := filepath.Join(cfg.ConfDir, "10-calico.conflist")
	for range 20 {
		if err := os.WriteFile(path, orig[:len(orig)/2], 0o644); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := os.WriteFile(path, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	wait()
	if got := types(load(t, filepath.Join(cfg.ConfDir, "10-calico.conflist"))); got[len(got)-1] != PluginType {
		t.Fatalf("after the rewrite: %v", got)
	}
}

func TestErrors(t *testing.T) {
	empty := Config{ConfDir: t.TempDir(), BinDir: t.TempDir()}
	if _, err := Install(empty); !errors.Is(err, ErrNoPrimary) {
		t.Errorf("empty conf dir: %v, want ErrNoPrimary", err)
	}
	if err := Uninstall(empty); err != nil {
		t.Errorf("uninstall with nothing installed: %v", err)
	}
	for name, body := range map[string]string{
		"bad json":    `{"plugins": [`,
		"plugins map": `{"name": "x", "plugins": {"type": "bridge"}}`,
		"neither":     `{"name": "x", "cniVersion": "1.0.0"}`,
	} {
		cfg := Config{ConfDir: t.TempDir(), BinDir: t.TempDir()}
		os.WriteFile(filepath.Join(cfg.ConfDir, "10-x.conflist"), []byte(body), 0o644)
		if _, err := Install(cfg); err == nil || !strings.Contains(err.Error(), "10-x.conflist") {
			t.Errorf("%s: %v, want an error naming the file", name, err)
		}
	}
}
