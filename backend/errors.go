package backend

import (
	"context"
	"errors"
	"fmt"

	"github.com/ecowatt/ecowatt/topics"
)

// Error codes. httpapi maps each to one HTTP status, in one place.
const (
	CodeInvalid      = "invalid"      // bad input; Field names the culprit
	CodeNotFound     = "not_found"    // no such device, operator, ...
	CodeConflict     = "conflict"     // already exists, or a state transition not allowed
	CodeUnauthorized = "unauthorized" // missing or wrong credentials
	CodeForbidden    = "forbidden"    // authenticated, but not allowed
	CodeTooLarge     = "too_large"    // request or message over its size limit
	CodeUnavailable  = "unavailable"  // a dependency (Redis, broker) is down
	CodeInternal     = "internal"     // a bug or an unexpected failure
)

// Error is the backend's one error type. Message and Field are safe to show
// to a client; Err is the internal cause, for logs only.
type Error struct {
	Code    string
	Message string
	Field   string
	Err     error
}

// Sentinels for errors.Is: any *Error with the same code matches them.
var (
	ErrInvalid      = &Error{Code: CodeInvalid}
	ErrNotFound     = &Error{Code: CodeNotFound}
	ErrConflict     = &Error{Code: CodeConflict}
	ErrUnauthorized = &Error{Code: CodeUnauthorized}
	ErrForbidden    = &Error{Code: CodeForbidden}
)

func (e *Error) Error() string {
	msg := e.Code
	if e.Message != "" {
		msg += ": " + e.Message
	}
	if e.Field != "" {
		msg += " (field " + e.Field + ")"
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches the bare sentinels (code only) by code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == "" && t.Field == "" && t.Err == nil && t.Code == e.Code
}

// Errorf returns an *Error with a client-safe message.
func Errorf(code, field, format string, args ...any) *Error {
	return &Error{Code: code, Field: field, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, or
// CodeInternal when there is none.
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// ErrorMessage returns the client-safe message and field of err. Errors
// without an *Error get a generic message, so internals never leak.
func ErrorMessage(err error) (message, field string) {
	var e *Error
	if !errors.As(err, &e) || e.Code == CodeInternal {
		return "internal error", ""
	}
	if e.Message == "" {
		return e.Code, e.Field
	}
	return e.Message, e.Field
}

// Unavailable wraps a failure of the state store (Redis) in op as
// CodeUnavailable. A cancelled or timed-out context stays itself (a client
// that hung up is not a store outage, and must not read as a 503), and an
// *Error already in err's chain is kept as it is.
func Unavailable(op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", op, err)
	}
	var be *Error
	if errors.As(err, &be) {
		return err
	}
	return &Error{Code: CodeUnavailable, Message: "storage unavailable", Err: fmt.Errorf("%s: %w", op, err)}
}

// Invalid turns a validation error (a *topics.FieldError, or several,
// from the rules both sides run) into a CodeInvalid *Error naming the
// first offending field. The message is the whole validation error, so
// that every offending field is listed.
func Invalid(err error) error {
	fe, ok := errors.AsType[*topics.FieldError](err)
	if !ok {
		return &Error{Code: CodeInvalid, Message: err.Error(), Err: err}
	}
	msg := err.Error()
	if fe == err && fe.Field == "" {
		msg = fe.Reason // not "invalid input: ..." twice over
	}
	return &Error{Code: CodeInvalid, Field: fe.Field, Message: msg, Err: err}
}
