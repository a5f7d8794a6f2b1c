package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// client speaks to the HTTP API for the CLI's admin commands.
type client struct {
	base  string
	token string
	http  *http.Client
	// header is added to every request (e.g. X-Ecowatt-Operator).
	header http.Header
}

// clientFlags registers --server and --token on fs.
func clientFlags(fs *flag.FlagSet) (server, token *string) {
	server = fs.String("server", "http://127.0.0.1:8080", "base URL of the ecowatt HTTP API")
	token = fs.String("admin-token", "", "admin bearer token")
	return server, token
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

// printJSON writes v indented.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
