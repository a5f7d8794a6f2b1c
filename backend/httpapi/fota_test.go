package httpapi

import (
	"bytes"
	"mime/multipart"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ecowatt/ecowatt/backend"
)

// TestReadUpload: the multipart form of a firmware upload, good and bad.
func TestReadUpload(t *testing.T) {
	form := func(fields ...string) (string, *bytes.Buffer) {
		var b bytes.Buffer
		mw := multipart.NewWriter(&b)
		for i := 0; i+1 < len(fields); i += 2 {
			if fields[i] == "file" || fields[i] == "manifest" {
				w, _ := mw.CreateFormFile(fields[i], "x.bin")
				w.Write([]byte(fields[i+1]))
			} else {
				mw.WriteField(fields[i], fields[i+1])
			}
		}
		mw.Close()
		return mw.FormDataContentType(), &b
	}
	cases := []struct {
		name, ctype string
		body        *bytes.Buffer
		code, field string
	}{
		{"json body", "application/json", bytes.NewBufferString(`{}`), backend.CodeInvalid, ""},
		{"no version", "", nil, backend.CodeInvalid, "version"},
		{"no file", "", nil, backend.CodeInvalid, "file"},
		{"unknown field", "", nil, backend.CodeInvalid, "extra"},
		{"bad chunk size", "", nil, backend.CodeInvalid, "chunk_size"},
		{"version too long", "", nil, backend.CodeTooLarge, "version"},
		{"good", "", nil, "", ""},
	}
	fields := map[string][]string{
		"no version":       {"file", "abc"},
		"no file":          {"version", "1.0.4"},
		"unknown field":    {"version", "1.0.4", "extra", "x", "file", "abc"},
		"bad chunk size":   {"version", "1.0.4", "chunk_size", "big", "file", "abc"},
		"version too long": {"version", strings.Repeat("1", 100), "file", "abc"},
		"good":             {"version", "1.0.4", "chunk_size", "2048", "manifest", "{}", "file", "abc"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctype, body := tc.ctype, tc.body
			if body == nil {
				ctype, body = form(fields[tc.name]...)
			}
			r := httptest.NewRequest("POST", "/api/v1/firmware", body)
			r.Header.Set("Content-Type", ctype)
			u, err := readUpload(r)
			if tc.code == "" {
				if err != nil || u.Version != "1.0.4" || string(u.Image) != "abc" || u.ChunkSize != 2048 || string(u.Manifest) != "{}" {
					t.Fatalf("upload %+v, %v", u, err)
				}
				return
			}
			if got := backend.ErrorCode(err); got != tc.code {
				t.Fatalf("code %s (%v), want %s", got, err, tc.code)
			}
			if _, field := backend.ErrorMessage(err); field != tc.field {
				t.Fatalf("field %q, want %q", field, tc.field)
			}
		})
	}
}
