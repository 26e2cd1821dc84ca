package release

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestFromEnv(t *testing.T) {
	c, err := FromEnv(env(map[string]string{"VERSION": "v2", "FAULT_RATE": "0.1"}))
	if err != nil || c.Version != "v2" || c.FaultRate != 0.1 {
		t.Errorf("FromEnv = %+v, %v", c, err)
	}
	c, err = FromEnv(env(nil))
	if err != nil || c.Version != "dev" || c.FaultRate != 0 {
		t.Errorf("FromEnv of nothing = %+v, %v", c, err)
	}
	for _, bad := range []string{"ten", "-0.1", "1.5"} {
		if _, err := FromEnv(env(map[string]string{"FAULT_RATE": bad})); err == nil {
			t.Errorf("FAULT_RATE=%s was taken", bad)
		}
	}
}

func TestFaultFailsExactlyItsShare(t *testing.T) {
	for _, rate := range []float64{0, 0.1, 0.3, 1} {
		f := NewFault(rate)
		failed := 0
		for i := 0; i < 1000; i++ {
			if f.Next() {
				failed++
			}
		}
		if want := int(rate * 1000); failed != want {
			t.Errorf("rate %g failed %d of 1000, want %d", rate, failed, want)
		}
	}
}

func get(t *testing.T, h http.Handler, path string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec
}

func TestWrapAnswersTheVersionCountsAndFails(t *testing.T) {
	app := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("hi"))
	})
	h := Wrap(app, Config{Version: "v4", FaultRate: 0.5}, NewMetrics())
	if rec := get(t, h, "/healthz"); rec.Code != 200 || rec.Body.String() != "ok v4\n" {
		t.Errorf("GET /healthz = %d %q", rec.Code, rec.Body.String())
	}
	codes := map[int]int{}
	for i := 0; i < 4; i++ {
		codes[get(t, h, "/sum").Code]++
	}
	if codes[200] != 2 || codes[500] != 2 {
		t.Errorf("codes of 4 requests at rate 0.5: %v", codes)
	}
	rec := get(t, h, "/metrics")
	body := rec.Body.String()
	for _, want := range []string{
		"# TYPE http_requests_total counter\n",
		"http_requests_total{code=\"200\"} 2\n",
		"http_requests_total{code=\"500\"} 2\n",
		"# TYPE http_request_duration_seconds histogram\n",
		"http_request_duration_seconds_bucket{le=\"+Inf\"} 4\n",
		"http_request_duration_seconds_bucket{le=\"5\"} 4\n",
		"http_request_duration_seconds_count 4\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("/metrics Content-Type %q", ct)
	}
}

func TestObserveFillsEveryBucketFromItsBound(t *testing.T) {
	m := NewMetrics()
	m.Observe(200, 30*time.Millisecond)
	var b strings.Builder
	if err := m.Write(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{`le="0.025"} 0`, `le="0.05"} 1`, `le="5"} 1`} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q:\n%s", want, out)
		}
	}
}

func TestListenWaitsForTheAddress(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := taken.Addr().String()
	go func() {
		time.Sleep(100 * time.Millisecond)
		taken.Close()
	}()
	l, err := Listen(addr, 5*time.Second)
	if err != nil {
		t.Fatalf("Listen(%s) after it was freed: %v", addr, err)
	}
	l.Close()
	busy, _ := net.Listen("tcp", "127.0.0.1:0")
	defer busy.Close()
	if _, err := Listen(busy.Addr().String(), 0); err == nil {
		t.Error("Listen on a taken address without waiting succeeded")
	}
}

func TestServeRefusesABadConfig(t *testing.T) {
	err := Serve("127.0.0.1:0", env(map[string]string{"FAULT_RATE": "x"}), http.NotFoundHandler())
	if err == nil || !strings.Contains(err.Error(), "FAULT_RATE") {
		t.Errorf("Serve with a bad FAULT_RATE: %v", err)
	}
}
