/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Connection-rate load generator for bench/agent_overhead.py: a connect/send/close loop on
 * loopback, compiled so the generator (not Python) is what the kernel-side cost is measured on.
 *
 *   loadgen SECONDS CLIENT_THREADS [RATE]
 *
 * A server thread accepts, reads until EOF and closes; each client thread loops: connect to
 * 127.0.0.1, send 64 bytes, close. Clients bind a rotating source address in 127.0.0.0/24
 * (port chosen at connect, IP_BIND_ADDRESS_NO_PORT): the TIME_WAIT sockets a run leaves behind
 * then never crowd the 4-tuple space of the next run, which otherwise makes rates drift. RATE (connections/s over all clients, 0 = as fast as
 * possible) paces the clients. Prints "connections=N seconds=S rate=R errors=E" and exits.
 * Only loopback is used.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static atomic_long done_count, error_count;
static atomic_int stop;
static struct sockaddr_in server_addr;
static double per_thread_interval; /* seconds between connections of one client, 0 = none */

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *server(void *arg)
{
	int lfd = (int)(long)arg;

	while (!atomic_load(&stop)) {
		int fd = accept(lfd, NULL, NULL);
		char buf[256];

		if (fd < 0)
			continue;
		/* the client writes once and closes: read to EOF inline, no thread per connection */
		while (read(fd, buf, sizeof(buf)) > 0)
			;
		close(fd);
		atomic_fetch_add(&done_count, 1);
	}
	return NULL;
}

static void *client(void *arg)
{
	static const char payload[64] = "flowtrail-loadgen";
	double next = now();
	unsigned int seq = (unsigned int)(long)arg * 7919;
	int one = 1;

	while (!atomic_load(&stop)) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in src = {.sin_family = AF_INET};

		src.sin_addr.s_addr = htonl(INADDR_LOOPBACK + 1 + seq++ % 250); /* 127.0.0.2-251 */
		if (fd >= 0) {
			setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
			bind(fd, (struct sockaddr *)&src, sizeof(src));
		}
		if (fd < 0 || connect(fd, (struct sockaddr *)&server_addr, sizeof(server_addr)) != 0 ||
		    write(fd, payload, sizeof(payload)) != (ssize_t)sizeof(payload)) {
			atomic_fetch_add(&error_count, 1);
			if (fd >= 0)
				close(fd);
			usleep(1000);
			continue;
		}
		close(fd);
		if (per_thread_interval > 0) {
			double t;

			next += per_thread_interval;
			t = next - now();
			if (t > 0)
				usleep((useconds_t)(t * 1e6));
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	double seconds, rate = 0, start, elapsed;
	int threads, lfd, one = 1;
	socklen_t len = sizeof(server_addr);
	pthread_t srv, *cl;

	if (argc < 3) {
		fprintf(stderr, "usage: loadgen SECONDS CLIENT_THREADS [RATE]\n");
		return 2;
	}
	seconds = atof(argv[1]);
	threads = atoi(argv[2]);
	if (argc > 3)
		rate = atof(argv[3]);
	if (threads < 1 || seconds <= 0) {
		fprintf(stderr, "loadgen: need SECONDS > 0 and CLIENT_THREADS >= 1\n");
		return 2;
	}
	per_thread_interval = rate > 0 ? threads / rate : 0;

	lfd = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&server_addr, 0, sizeof(server_addr));
	server_addr.sin_family = AF_INET;
	server_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(lfd, (struct sockaddr *)&server_addr, sizeof(server_addr)) != 0 ||
	    listen(lfd, 4096) != 0 || getsockname(lfd, (struct sockaddr *)&server_addr, &len) != 0) {
		perror("loadgen: listen");
		return 1;
	}
	pthread_create(&srv, NULL, server, (void *)(long)lfd);
	cl = calloc(threads, sizeof(*cl));
	start = now();
	for (int i = 0; i < threads; i++)
		pthread_create(&cl[i], NULL, client, (void *)(long)i);
	usleep((useconds_t)(seconds * 1e6));
	atomic_store(&stop, 1);
	elapsed = now() - start;
	for (int i = 0; i < threads; i++)
		pthread_join(cl[i], NULL);
	shutdown(lfd, SHUT_RDWR); /* wakes the server out of accept() */
	pthread_join(srv, NULL);
	printf("connections=%ld seconds=%.3f rate=%.1f errors=%ld\n", atomic_load(&done_count),
	       elapsed, atomic_load(&done_count) / elapsed, atomic_load(&error_count));
	return 0;
}
