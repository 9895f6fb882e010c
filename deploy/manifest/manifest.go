// Package manifest decodes Strait's manifests into objects and applies
// them to a cluster with server-side apply, in dependency order:
// namespaces and CRDs first, then everything else.
package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
)

// Object is one manifest object and the file it came from.
type Object struct {
	*unstructured.Unstructured
	File string
}

// String is "Kind namespace/name" (or "Kind name" for cluster objects).
func (o Object) String() string {
	if ns := o.GetNamespace(); ns != "" {
		return fmt.Sprintf("%s %s/%s", o.GetKind(), ns, o.GetName())
	}
	return fmt.Sprintf("%s %s", o.GetKind(), o.GetName())
}

// Load decodes every *.yaml file under the given directories of fsys
// (kustomization.yaml files excepted) into objects, sorted for applying.
// Empty documents are skipped; an object without apiVersion, kind or name
// is an error naming its file and position.
func Load(fsys fs.FS, dirs ...string) ([]Object, error) {
	var objs []Object
	for _, dir := range dirs {
		entries, err := fs.ReadDir(fsys, dir)
		if err != nil {
			return nil, fmt.Errorf("manifest: %w", err)
		}
		for _, e := range entries {
			name := e.Name()
			if e.IsDir() || !strings.HasSuffix(name, ".yaml") || name == "kustomization.yaml" {
				continue
			}
			file := path.Join(dir, name)
			data, err := fs.ReadFile(fsys, file)
			if err != nil {
				return nil, fmt.Errorf("manifest: %w", err)
			}
			got, err := Decode(file, data)
			if err != nil {
				return nil, err
			}
			objs = append(objs, got...)
		}
	}
	Sort(objs)
	return objs, nil
}

// Decode splits a multi-document YAML file into objects.
func Decode(file string, data []byte) ([]Object, error) {
	var out []Object
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for i := 1; ; i++ {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("manifest: %s: document %d: %w", file, i, err)
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		if u.GetAPIVersion() == "" || u.GetKind() == "" || u.GetName() == "" {
			return nil, fmt.Errorf("manifest: %s: document %d: apiVersion, kind and metadata.name are required", file, i)
		}
		out = append(out, Object{u, file})
	}
}

// order puts what others depend on first.
var order = []string{"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap", "Secret", "Service"}

func rank(kind string) int {
	if i := slices.Index(order, kind); i >= 0 {
		return i
	}
	return len(order)
}

// Sort orders objects for applying (deleting is the reverse): by kind
// rank, then file, then name; stable otherwise.
func Sort(objs []Object) {
	sort.SliceStable(objs, func(i, j int) bool {
		a, b := objs[i], objs[j]
		if ra, rb := rank(a.GetKind()), rank(b.GetKind()); ra != rb {
			return ra < rb
		}
		if a.File != b.File {
			return a.File < b.File
		}
		return a.GetName() < b.GetName()
	})
}
