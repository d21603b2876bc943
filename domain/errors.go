package domain

import (
	"errors"
	"fmt"
)

// Code classifies an error for the edge that reports it (HTTP status, log level).
type Code string

// Error codes. The HTTP edge maps each to one status.
const (
	CodeInvalid         Code = "invalid"         // the request is malformed or breaks a rule
	CodeUnauthenticated Code = "unauthenticated" // no valid credentials
	CodeForbidden       Code = "forbidden"       // authenticated, not allowed
	CodeNotFound        Code = "not_found"       // does not exist, or the caller may not know it does
	CodeConflict        Code = "conflict"        // clashes with the current state
	CodeUnavailable     Code = "unavailable"     // a dependency is down; try again later
	CodeInternal        Code = "internal"        // a bug or an unexpected failure
)

// Error is the one error type that carries a Code. Message is safe to show to the caller; Err,
// when set, is the underlying cause for logs.
type Error struct {
	Code    Code
	Message string
	Err     error
}

// Errorf returns an *Error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Unavailable wraps a dependency failure so that it reaches the caller as "try again later"
// while the cause stays in the logs.
func Unavailable(message string, err error) *Error {
	return &Error{Code: CodeUnavailable, Message: message, Err: err}
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// ErrorCode returns the code of the first *Error in err's chain, CodeInternal if there is none.
func ErrorCode(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// ErrorMessage returns the caller-safe message of err: its *Error's message, or a generic one
// for anything else, whose details belong in the logs only.
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}
