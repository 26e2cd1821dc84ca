// Command go-service is a small HTTP service on the standard library only:
// GET /sum?a=1&b=2 answers {"sum":3}. Deployed, it also answers GET /healthz with its version
// and GET /metrics in Prometheus' text format (package release; VERSION and FAULT_RATE set them).
package main

import (
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"

	"example.com/go-service/internal/release"
)

// Sum adds two integers.
func Sum(a, b int) int {
	return a + b
}

func healthz(w http.ResponseWriter, _ *http.Request) {
	fmt.Fprintln(w, "ok")
}

func sum(w http.ResponseWriter, r *http.Request) {
	a, errA := strconv.Atoi(r.URL.Query().Get("a"))
	b, errB := strconv.Atoi(r.URL.Query().Get("b"))
	if errA != nil || errB != nil {
		http.Error(w, "a and b must be integers", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(map[string]int{"sum": Sum(a, b)}); err != nil {
		log.Printf("writing the answer: %v", err)
	}
}

// Handler routes the service's requests.
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", healthz)
	mux.HandleFunc("/sum", sum)
	return mux
}

// ListenAddr is the address to listen on: env (the ADDR variable) when set, else ":8080".
func ListenAddr(env string) string {
	if env == "" {
		return ":8080"
	}
	return env
}

func main() {
	addr := ListenAddr(os.Getenv("ADDR"))
	log.Printf("starting on %s", addr)
	log.Fatal(release.Serve(addr, os.Getenv, Handler()))
}
