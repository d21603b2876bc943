package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"unicode/utf8"

	"github.com/chatd-dev/chatd/domain"
	"github.com/labstack/echo/v4"
)

// decodeJSON reads a request body of at most max bytes into v. It refuses what a lenient
// decoder would quietly accept: an empty body, invalid UTF-8 (encoding/json would replace it
// with U+FFFD, changing what the user sent), unknown fields, and trailing data.
func decodeJSON(r io.Reader, max int64, v any) error {
	body, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return domain.Errorf(domain.CodeInvalid, "could not read the request body")
	}
	if int64(len(body)) > max {
		return domain.Errorf(domain.CodeInvalid, "the request body is larger than %d bytes", max)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return domain.Errorf(domain.CodeInvalid, "the request body is empty; send a JSON object")
	}
	if !utf8.Valid(body) {
		return domain.Errorf(domain.CodeInvalid, "the request body is not valid UTF-8")
	}
	if bytes.TrimSpace(body)[0] != '{' {
		return domain.Errorf(domain.CodeInvalid, "malformed JSON: the body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return domain.Errorf(domain.CodeInvalid, "malformed JSON: %s", jsonProblem(err))
	}
	if dec.More() {
		return domain.Errorf(domain.CodeInvalid, "malformed JSON: data after the object")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return domain.Errorf(domain.CodeInvalid, "malformed JSON: data after the object")
	}
	return nil
}

func jsonProblem(err error) string {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		if typeErr.Field == "" {
			return "the body must be a JSON object"
		}
		return fmt.Sprintf("field %q must not be a JSON %s", typeErr.Field, typeErr.Value)
	}
	return err.Error()
}

func (s *server) bind(c echo.Context, v any) error {
	return decodeJSON(http.MaxBytesReader(c.Response(), c.Request().Body, s.MaxBodyBytes+1), s.MaxBodyBytes, v)
}

// querySeq parses an optional non-negative sequence parameter; absent means 0.
func querySeq(c echo.Context, name string) (uint64, error) {
	v := c.QueryParam(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 63)
	if err != nil {
		return 0, domain.Errorf(domain.CodeInvalid, "%s must be a non-negative integer", name)
	}
	return n, nil
}

// queryLimit parses the page size: def when absent, 1..max otherwise.
func queryLimit(c echo.Context, def, max int) (int, error) {
	v := c.QueryParam("limit")
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > max {
		return 0, domain.Errorf(domain.CodeInvalid, "limit must be between 1 and %d", max)
	}
	return n, nil
}
