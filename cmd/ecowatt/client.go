package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ecowatt/ecowatt/cmd/internal/flagenv"
)

// client speaks to the HTTP API for the CLI's admin commands.
type client struct {
	base  string
	token string
	http  *http.Client
	// header is added to every request (e.g. X-Ecowatt-Operator).
	header http.Header
}

func newClient(server, token string) *client {
	return &client{base: strings.TrimRight(server, "/"), token: token, http: &http.Client{Timeout: 60 * time.Second}}
}

// apiError is the API's error body, shown to the user as it came.
type apiError struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

func (e *apiError) Error() string {
	s := fmt.Sprintf("server said %d %s: %s", e.Status, e.Code, e.Message)
	if e.Field != "" {
		s += " (field " + e.Field + ")"
	}
	return s
}

// do sends a JSON request and decodes a JSON response into out (if non-nil).
func (c *client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encode: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	return c.doRaw(ctx, method, path, "application/json", body, out)
}

func (c *client) doRaw(ctx context.Context, method, path, contentType string, body io.Reader, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	for k, vs := range c.header {
		req.Header[k] = vs
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read response: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		return parseAPIError(resp.StatusCode, raw)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return nil
}

// parseAPIError turns an error response into an *apiError, verbatim.
func parseAPIError(status int, raw []byte) error {
	var wrapped struct {
		Error apiError `json:"error"`
	}
	if json.Unmarshal(raw, &wrapped) == nil && wrapped.Error.Message != "" {
		wrapped.Error.Status = status
		return &wrapped.Error
	}
	return &apiError{Status: status, Code: http.StatusText(status), Message: strings.TrimSpace(string(raw))}
}

// decodeError reads an error response whose body was not consumed.
func (c *client) decodeError(resp *http.Response) error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return parseAPIError(resp.StatusCode, raw)
}

// apiPath is the API URL path of the given segments, each escaped:
// apiPath("devices", id, "commands") is /api/v1/devices/{id}/commands.
func apiPath(segments ...string) string {
	var b strings.Builder
	b.WriteString("/api/v1")
	for _, s := range segments {
		b.WriteString("/")
		b.WriteString(url.PathEscape(s))
	}
	return b.String()
}

// withQuery appends q to path when q has values.
func withQuery(path string, q url.Values) string {
	if len(q) == 0 {
		return path
	}
	return path + "?" + q.Encode()
}

// printJSON writes v indented.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// call is one run of a client command: its flags, then the client they
// configure.
type call struct {
	e        env
	name     string // "device show": the prefix of its errors
	synopsis string
	fs       *flag.FlagSet
	server   *string
	token    *string
	out      output // set by -o when the command has it
	c        *client
}

// Flags of every client command; the only ones read from the environment,
// the others are local to one invocation.
const (
	flagServer = "server"
	flagToken  = "admin-token"
)

// newCall starts a client command with --server, --admin-token and, when
// withOutput, -o table|json.
func newCall(e env, name, synopsis string, withOutput bool) *call {
	k := newOffline(e, name, synopsis)
	k.server = k.fs.String(flagServer, "http://127.0.0.1:8080", "base URL of the ecowatt HTTP API")
	k.token = k.fs.String(flagToken, "", "bearer token: the bootstrap admin token or an operator's (default: the one `ecowatt login` stored)")
	if withOutput {
		k.fs.Var(&k.out, "o", "output format: table or json")
	}
	return k
}

// newOffline starts a command that does not talk to the server (signing,
// key generation): every flag is local.
func newOffline(e env, name, synopsis string) *call {
	return &call{e: e, name: name, synopsis: synopsis, fs: newFlags(e, name, synopsis), out: outputTable}
}

// parse parses args and checks that min to max positional arguments came
// (max < 0: no limit).
func (k *call) parse(args []string, min, max int) ([]string, error) {
	k.fs.VisitAll(func(f *flag.Flag) {
		if f.Name != flagServer && f.Name != flagToken {
			flagenv.Local(k.fs, f.Name)
		}
	})
	pos, err := parseFlags(k.fs, k.e, args)
	if err != nil {
		return nil, err
	}
	if len(pos) < min || (max >= 0 && len(pos) > max) {
		return nil, k.usage("")
	}
	if k.server != nil {
		tok := *k.token
		if tok == "" {
			tok = storedToken(k.e)
		}
		k.c = newClient(*k.server, tok)
	}
	return pos, nil
}

// usage is the command's usage error, with why when it is not obvious.
func (k *call) usage(why string) error {
	msg := "usage: ecowatt " + k.synopsis
	if why != "" {
		msg += " (" + why + ")"
	}
	return usageError{msg}
}

// send sends a JSON request and returns the JSON answer as it came.
func (k *call) send(ctx context.Context, method, path string, in any) (json.RawMessage, error) {
	var raw json.RawMessage
	if err := k.c.do(ctx, method, path, in, &raw); err != nil {
		return nil, fmt.Errorf("%s: %w", k.name, err)
	}
	return raw, nil
}

// show sends a request and prints the answer: as it came with -o json,
// else decoded into T and drawn by table.
func show[T any](ctx context.Context, k *call, method, path string, in any, table func(io.Writer, T) error) error {
	raw, err := k.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	return render(k, raw, table)
}

// render prints raw as show does.
func render[T any](k *call, raw json.RawMessage, table func(io.Writer, T) error) error {
	if k.out == outputJSON {
		return printJSON(k.e.stdout, raw)
	}
	v, err := decode[T](k, raw)
	if err != nil {
		return err
	}
	return table(k.e.stdout, v)
}

// decode reads the server's answer into T.
func decode[T any](k *call, raw json.RawMessage) (T, error) {
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, fmt.Errorf("%s: decode: %w", k.name, err)
	}
	return v, nil
}
