package admin

import (
	"bytes"
	"crypto"
	"encoding"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// pemMarker is in every PEM private key header ("-----BEGIN EC PRIVATE
// KEY-----", "-----BEGIN PRIVATE KEY-----", ...).
var pemMarker = []byte("PRIVATE KEY")

var (
	// privateKeyType: every standard library private key (rsa, ecdsa,
	// ed25519, ecdh) and crypto.Signer has Public() crypto.PublicKey;
	// public keys do not.
	privateKeyType    = reflect.TypeFor[interface{ Public() crypto.PublicKey }]()
	jsonMarshalerType = reflect.TypeFor[json.Marshaler]()
	textMarshalerType = reflect.TypeFor[encoding.TextMarshaler]()
)

// maxWalkDepth bounds the walk; a deeper value is refused (fail closed).
const maxWalkDepth = 200

// findPrivateKey walks v as encoding/json would (exported fields not
// tagged "-", maps, slices, arrays, pointers, interfaces) and reports the
// path of the first private key, or of the first string or []byte
// containing "PRIVATE KEY". Types with their own JSON or text marshaling
// are not descended into (the JSON output is checked for PEM afterwards).
// Pointer cycles are followed once.
func findPrivateKey(v any) (string, bool) {
	w := walker{seen: make(map[visit]bool)}
	segs, found := w.walk(reflect.ValueOf(v), 0)
	if !found {
		return "", false
	}
	slices.Reverse(segs)
	return "$" + strings.Join(segs, ""), true
}

type visit struct {
	ptr uintptr
	typ reflect.Type
}

type walker struct{ seen map[visit]bool }

// walk returns the path segments (innermost first) of a hit.
func (w *walker) walk(v reflect.Value, depth int) ([]string, bool) {
	if !v.IsValid() {
		return nil, false
	}
	if depth > maxWalkDepth {
		return []string{" (nested too deep to check)"}, true
	}
	t := v.Type()
	if t.Implements(privateKeyType) || (t.Kind() != reflect.Pointer && t.Kind() != reflect.Interface && reflect.PointerTo(t).Implements(privateKeyType)) {
		return []string{" (" + t.String() + ")"}, true
	}
	if depth > 0 && t.Kind() != reflect.Interface && (t.Implements(jsonMarshalerType) || t.Implements(textMarshalerType)) {
		return nil, false
	}
	switch t.Kind() {
	case reflect.Interface:
		if v.IsNil() {
			return nil, false
		}
		return w.walk(v.Elem(), depth+1)
	case reflect.Pointer:
		if v.IsNil() {
			return nil, false
		}
		k := visit{v.Pointer(), t}
		if w.seen[k] {
			return nil, false
		}
		w.seen[k] = true
		return w.walk(v.Elem(), depth+1)
	case reflect.Struct:
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() && !f.Anonymous {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			if segs, found := w.walk(v.Field(i), depth+1); found {
				return append(segs, "."+name), true
			}
		}
	case reflect.Map:
		it := v.MapRange()
		for it.Next() {
			k := it.Key()
			if k.Kind() == reflect.String && strings.Contains(k.String(), string(pemMarker)) {
				return []string{"[map key]"}, true
			}
			if segs, found := w.walk(it.Value(), depth+1); found {
				return append(segs, "["+strconv.Quote(fmt.Sprint(k))+"]"), true
			}
		}
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			var b []byte
			if t.Kind() == reflect.Slice {
				b = v.Bytes()
			} else {
				b = make([]byte, v.Len())
				reflect.Copy(reflect.ValueOf(b), v)
			}
			if bytes.Contains(b, pemMarker) {
				return nil, true
			}
			return nil, false
		}
		for i := 0; i < v.Len(); i++ {
			if segs, found := w.walk(v.Index(i), depth+1); found {
				return append(segs, "["+strconv.Itoa(i)+"]"), true
			}
		}
	case reflect.String:
		if strings.Contains(v.String(), string(pemMarker)) {
			return nil, true
		}
	}
	return nil, false
}
