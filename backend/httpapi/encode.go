package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/rs/zerolog"
)

// codeMethodNotAllowed is the API's own error code for a known path asked
// with a method it does not serve; the backend never returns it.
const codeMethodNotAllowed = "method_not_allowed"

// status maps a backend error code to its HTTP status. It is the only such
// mapping.
func status(code string) int {
	switch code {
	case codeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case backend.CodeInvalid:
		return http.StatusBadRequest
	case backend.CodeNotFound:
		return http.StatusNotFound
	case backend.CodeConflict:
		return http.StatusConflict
	case backend.CodeUnauthorized:
		return http.StatusUnauthorized
	case backend.CodeForbidden:
		return http.StatusForbidden
	case backend.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case backend.CodeUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

// writeError writes err as JSON. Only the client-safe message and field
// are shown; the full error is logged for server-side failures.
func writeError(w http.ResponseWriter, log zerolog.Logger, err error) {
	code := backend.ErrorCode(err)
	st := status(code)
	if st >= 500 {
		log.Error().Err(err).Int("status", st).Msg("request failed")
	}
	msg, field := backend.ErrorMessage(err)
	if code == backend.CodeUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="ecowatt"`)
	}
	encode(w, st, errorBody{Error: errorDetail{Code: code, Message: msg, Field: field}})
}

func encode(w http.ResponseWriter, st int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		st = http.StatusInternalServerError
		b = []byte(`{"error":{"code":"internal","message":"internal error"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(st)
	w.Write(append(b, '\n'))
}

// serviceHandler adapts a handler that may fail to http.Handler: it answers
// off (503) when the feature's service is not configured, writes fn's error
// through writeError, and encodes fn's result with status st.
func serviceHandler(log zerolog.Logger, disabled bool, off error, st int, fn func(w http.ResponseWriter, r *http.Request) (any, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if disabled {
			writeError(w, log, off)
			return
		}
		v, err := fn(w, r)
		if err != nil {
			writeError(w, log, err)
			return
		}
		encode(w, st, v)
	})
}

// decode reads one JSON object of at most MaxBodySize bytes into v,
// refusing unknown fields and trailing data.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := readBody(w, r)
	if err != nil {
		return err
	}
	return decodeBytes(body, v)
}

// decodeOptional is decode for routes whose body may be empty (however it
// was sent: no Content-Length, or chunked with no data); v is then left alone.
func decodeOptional(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := readBody(w, r)
	if err != nil || len(bytes.TrimSpace(body)) == 0 {
		return err
	}
	return decodeBytes(body, v)
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodySize))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, backend.Errorf(backend.CodeTooLarge, "", "request body over %d bytes", MaxBodySize)
		}
		return nil, backend.Errorf(backend.CodeInvalid, "", "request body unreadable")
	}
	return body, nil
}

func decodeBytes(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if dec.More() {
		return backend.Errorf(backend.CodeInvalid, "", "request body has data after the JSON object")
	}
	return nil
}

// jsonError turns a decoding error into a client-safe *backend.Error.
func jsonError(err error) error {
	if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		return backend.Errorf(backend.CodeInvalid, te.Field, "field %s must be a JSON %s", te.Field, jsonKind(te.Type.Kind().String()))
	}
	if msg, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		field := strings.Trim(msg, `"`)
		return backend.Errorf(backend.CodeInvalid, field, "unknown field %s", msg)
	}
	if errors.Is(err, io.EOF) {
		return backend.Errorf(backend.CodeInvalid, "", "request body is empty; want a JSON object")
	}
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		return backend.Errorf(backend.CodeInvalid, "", "request body is not valid JSON (at byte %d)", se.Offset)
	}
	return backend.Errorf(backend.CodeInvalid, "", "request body is not valid JSON")
}

func jsonKind(k string) string {
	switch {
	case strings.HasPrefix(k, "int"), strings.HasPrefix(k, "uint"), strings.HasPrefix(k, "float"):
		return "number"
	case k == "struct" || k == "map":
		return "object"
	case k == "slice" || k == "array":
		return "array"
	case k == "bool":
		return "boolean"
	}
	return k
}
