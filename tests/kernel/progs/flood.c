/* argv: count, every, program, alarm — execs program count times, alarm every every-th */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	int n = atoi(argv[1]), every = atoi(argv[2]);
	for (int i = 1; i <= n; i++) {
		char *p = i % every ? argv[3] : argv[4], *a[] = { p, 0 };
		pid_t pid = vfork();
		if (!pid) {
			execve(p, a, 0);
			_exit(127);
		}
		waitpid(pid, 0, 0);
	}
	return 0;
}
