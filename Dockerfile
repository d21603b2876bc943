# chatd for compose.yaml and production: a static binary on a small image. It does not run the
# embedded PostgreSQL, so the image holds no PostgreSQL binaries: give it DATABASE_URL.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /chatd ./cmd/chatd

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /chatd /chatd
ENV CHAT_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["/chatd"]
