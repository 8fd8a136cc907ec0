package prometheus

import (
	"io"
	"net/http"
)

// ReadyHandler returns an HTTP handler for a load balancer's health check
// or a Kubernetes readiness probe: 200 "ok" when r.Ready() returns nil,
// 503 with the error's text otherwise (see scaleout.Exchange.Ready for
// when an exchange is ready). Responses are plain text and not cached.
// Each request costs one Ready call (atomic loads for an Exchange).
func ReadyHandler(r Readier) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := r.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, err.Error()+"\n")
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
}
