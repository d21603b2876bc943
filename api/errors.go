package api

import (
	"errors"
	"net/http"

	"github.com/chatd-dev/chatd/domain"
	"github.com/labstack/echo/v4"
)

// statusOf is the one table from domain error codes to HTTP statuses.
var statusOf = map[domain.Code]int{
	domain.CodeInvalid:         http.StatusBadRequest,
	domain.CodeUnauthenticated: http.StatusUnauthorized,
	domain.CodeForbidden:       http.StatusForbidden,
	domain.CodeNotFound:        http.StatusNotFound,
	domain.CodeConflict:        http.StatusConflict,
	domain.CodeUnavailable:     http.StatusServiceUnavailable,
	domain.CodeInternal:        http.StatusInternalServerError,
}

// codeOfStatus classifies echo's own errors (unknown route, wrong method).
var codeOfStatus = map[int]domain.Code{
	http.StatusNotFound:         domain.CodeNotFound,
	http.StatusMethodNotAllowed: "method_not_allowed",
	http.StatusUnauthorized:     domain.CodeUnauthenticated,
	http.StatusBadRequest:       domain.CodeInvalid,
}

type errorBody struct {
	Error struct {
		Code    domain.Code `json:"code"`
		Message string      `json:"message"`
	} `json:"error"`
}

// handleError writes every error in one JSON shape: {"error":{"code":"...","message":"..."}}.
// Internal errors are logged in full and shown as a generic message.
func (s *server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	var body errorBody
	status := http.StatusInternalServerError
	var he *echo.HTTPError
	switch {
	case errors.As(err, &he):
		status = he.Code
		body.Error.Code = codeOfStatus[he.Code]
		if body.Error.Code == "" {
			body.Error.Code = domain.CodeInternal
		}
		body.Error.Message = http.StatusText(he.Code)
	default:
		code := domain.ErrorCode(err)
		status = statusOf[code]
		body.Error.Code, body.Error.Message = code, domain.ErrorMessage(err)
	}
	switch {
	case status == http.StatusServiceUnavailable:
		// A dependency is down or behind: expected during outages, logged once per request.
		s.Log.Warn("request unavailable", "method", c.Request().Method, "route", c.Path(), "err", err)
		c.Response().Header().Set("Retry-After", "1")
	case status >= 500:
		s.Log.Error("request failed", "method", c.Request().Method, "route", c.Path(), "status", status, "err", err)
	}
	_ = c.JSON(status, body)
}
