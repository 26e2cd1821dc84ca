package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestSum(t *testing.T) {
	if got := Sum(2, 3); got != 5 {
		t.Errorf("Sum(2, 3) = %d, want 5", got)
	}
}

func get(t *testing.T, path string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec
}

func TestHealthz(t *testing.T) {
	rec := get(t, "/healthz")
	if rec.Code != http.StatusOK || strings.TrimSpace(rec.Body.String()) != "ok" {
		t.Errorf("GET /healthz = %d %q", rec.Code, rec.Body.String())
	}
}

func TestSumHandler(t *testing.T) {
	rec := get(t, "/sum?a=1&b=2")
	if rec.Code != http.StatusOK || strings.TrimSpace(rec.Body.String()) != `{"sum":3}` {
		t.Errorf("GET /sum?a=1&b=2 = %d %q", rec.Code, rec.Body.String())
	}
}

func TestSumHandlerRefusesWords(t *testing.T) {
	if rec := get(t, "/sum?a=one&b=2"); rec.Code != http.StatusBadRequest {
		t.Errorf("GET /sum?a=one&b=2 = %d, want 400", rec.Code)
	}
}

func TestListenAddr(t *testing.T) {
	if got := ListenAddr(""); got != ":8080" {
		t.Errorf(`ListenAddr("") = %q`, got)
	}
	if got := ListenAddr("127.0.0.1:9000"); got != "127.0.0.1:9000" {
		t.Errorf("ListenAddr kept %q", got)
	}
}
